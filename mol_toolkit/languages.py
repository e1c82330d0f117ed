"""The language table (FLORES-200 code, name, script, family, superfamily, NLLB resource level) and the papers'
language lists and groups. One table serves group_languages.py and build_interference.py.

`languages.tsv` covers the Interference Matrix paper's Appendix B and the Mixture of Languages paper's Tables 8-10.
The papers' slips are fixed, not copied: `swl_Latn` is Swahili `swh_Latn`, `hye_Arnm` is `hye_Armn`, Lao is
`lao_Laoo` (never `lao_Lao`); Appendix B leaves Basque and Hungarian without a family (here: the isolate `Basque`,
and `Ugric` of Uralic) and some rows without a resource level (here from the Mixture of Languages paper's Table 12:
zho_Hant High; Burmese and the Dravidian languages Low; zho_Hans High). The paper says 83 languages but its
Appendix B lists 90 rows, the same 90 as the Mixture of Languages paper's Table 10; `interference-83` is that list.
"""

import csv
import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


TABLE = Path(__file__).with_name("languages.tsv")
CODE_FIXES = {"swl_Latn": "swh_Latn", "hye_Arnm": "hye_Armn", "lao_Lao": "lao_Laoo"}


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    family: str
    superfamily: str
    resource: str


@lru_cache(maxsize=None)
def language_table():
    """code -> Language, in the table's order (by family)."""
    with open(TABLE, encoding="utf-8", newline="") as handle:
        return {row["code"]: Language(**row) for row in csv.DictReader(handle, delimiter="\t")}


def language(code):
    table = language_table()
    code = CODE_FIXES.get(code, code)
    if code not in table:
        close = difflib.get_close_matches(code, table, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown language code {code!r}: the language table ({TABLE.name}) has no such row.{hint}")
    return table[code]


# Mixture of Languages, Table 8: the 30 languages in five family groups (the paper's group numbers).
PAPER_GROUPS_30 = {
    "1": ["arb_Arab", "hau_Latn", "heb_Hebr", "ary_Arab", "mlt_Latn", "kab_Latn"],
    "2": ["swh_Latn", "lin_Latn", "xho_Latn", "bem_Latn", "zul_Latn", "fon_Latn"],
    "3": ["ind_Latn", "fij_Latn", "bug_Latn", "zsm_Latn", "ceb_Latn", "tgl_Latn"],
    "4": ["fra_Latn", "spa_Latn", "ita_Latn", "glg_Latn", "por_Latn", "scn_Latn"],
    "5": ["eng_Latn", "afr_Latn", "deu_Latn", "nob_Latn", "dan_Latn", "tpi_Latn"],
}

# Mixture of Languages, Table 9: the 90 languages in ten groups (not a pure family split: group 10 gathers the
# languages left alone by their family; its swl_Latn is swh_Latn).
PAPER_GROUPS_90 = {
    "01": ["als_Latn", "hye_Armn", "cym_Latn", "gla_Latn", "gle_Latn", "ell_Grek", "kmr_Latn", "prs_Arab",
           "pbt_Arab", "est_Latn", "fin_Latn", "hun_Latn"],
    "02": ["bel_Cyrl", "bos_Latn", "bul_Cyrl", "ces_Latn", "srp_Cyrl", "hrv_Latn", "lvs_Latn", "lit_Latn",
           "mkd_Cyrl", "ukr_Cyrl", "pol_Latn", "rus_Cyrl", "slk_Latn", "slv_Latn"],
    "03": ["afr_Latn", "dan_Latn", "deu_Latn", "eng_Latn", "isl_Latn", "nld_Latn", "nno_Latn", "swe_Latn", "ydd_Hebr"],
    "04": ["asm_Beng", "ben_Beng", "guj_Gujr", "hin_Deva", "mar_Deva", "npi_Deva", "ory_Orya", "pan_Guru",
           "san_Deva", "sin_Sinh", "snd_Arab", "urd_Arab"],
    "05": ["cat_Latn", "fra_Latn", "glg_Latn", "ita_Latn", "por_Latn", "ron_Latn", "spa_Latn"],
    "06": ["amh_Ethi", "arb_Arab", "hau_Latn", "heb_Hebr", "gaz_Latn", "som_Latn"],
    "07": ["ind_Latn", "jav_Latn", "plt_Latn", "zsm_Latn", "sun_Latn"],
    "08": ["kan_Knda", "mal_Mlym", "tam_Taml", "tel_Telu"],
    "09": ["azj_Latn", "kaz_Cyrl", "kir_Cyrl", "tur_Latn", "uig_Arab", "uzn_Latn"],
    "10": ["lao_Laoo", "tha_Thai", "mya_Mymr", "zho_Hans", "kat_Geor", "zho_Hant", "swh_Latn", "xho_Latn",
           "khm_Khmr", "kor_Hang", "vie_Latn", "eus_Latn", "epo_Latn", "jpn_Jpan", "khk_Cyrl"],
}

# Mixture of Languages, Table 10 (90 languages), in the table's alphabetical order.
MOL_90 = sorted(code for codes in PAPER_GROUPS_90.values() for code in codes)
MOL_30 = [code for codes in PAPER_GROUPS_30.values() for code in codes]
# Interference Matrix, Appendix B: the same 90 languages, in the appendix's order (by family).
INTERFERENCE_83 = [code for code in language_table() if code in set(MOL_90)]

PRESETS = {"mol-30": MOL_30, "mol-90": MOL_90, "interference-83": INTERFERENCE_83}
PAPER_GROUPS = {"mol-30": PAPER_GROUPS_30, "mol-90": PAPER_GROUPS_90}


def resolve_languages(spec):
    """A preset name (mol-30, mol-90, interference-83), a comma-separated string or a list -> checked codes."""
    if isinstance(spec, str) and spec in PRESETS:
        return list(PRESETS[spec])
    codes = [c.strip() for c in spec.split(",") if c.strip()] if isinstance(spec, str) else list(spec)
    if not codes:
        raise ValueError(f"No languages given: name a preset {sorted(PRESETS)} or list FLORES codes.")
    codes = [language(code).code for code in codes]
    repeated = sorted({c for c in codes if codes.count(c) > 1})
    if repeated:
        raise ValueError(f"Languages {repeated} are listed more than once.")
    return codes
