"""The language table (FLORES-200 code, name, script, family, superfamily, NLLB resource level) and the papers'
language lists and groups. One table serves group_languages.py and build_interference.py.

`languages.tsv` holds every FLORES-200 language (204 codes), each once. Its first 104 rows cover the Interference
Matrix paper's Appendix B and the Mixture of Languages paper's Tables 8-10 (their values, as below); the other 100
rows complete FLORES-200. Where each value of those rows comes from:
- code and name: the language table of FLORES-200's README (facebookresearch/flores, flores200/README.md);
- script: the ISO 15924 part of the code, by its Unicode name (Geez for Ethi, as in the papers' rows);
- family: Glottolog's subgroups, named as in the papers' rows (Benue-Congo for the Bantu languages, Kwa, Gur,
  Volta-Niger, ...);
- superfamily: the names of the papers' rows (Interference Matrix, Appendix B), which follow the classic
  classification of WALS and Ethnologue: `Niger-Congo` where Glottolog's top-level family is Atlantic-Congo (and
  Mande, Dogon, ... are separate), `Creole` for the creoles Glottolog calls "Pidgin or Creole"; elsewhere it is
  Glottolog's top-level family;
- resource: the High/Low column of the NLLB paper's Table 1 (NLLB Team, 2022). Of the 100 rows only Western
  Persian (pes_Arab) is High. `resource_source(code)` states each row's source.
The FLORES+ renames (`cmn_Hans`, `ekk_Latn`, `fil_Latn`, ...) and NLLB's `sat_Beng` for Santali resolve to
their FLORES-200 rows (`ALIASES`).
The papers' slips are fixed, not copied: `swl_Latn` is Swahili `swh_Latn`, `hye_Arnm` is `hye_Armn`, Lao is
`lao_Laoo` (never `lao_Lao`); Appendix B leaves Basque and Hungarian without a family (here: the isolate `Basque`,
and `Ugric` of Uralic) and some rows without a resource level (here from the Mixture of Languages paper's Table 12:
zho_Hant High; Burmese and the Dravidian languages Low; zho_Hans, in neither, High by analogy: marked
unsourced by `resource_source`). The paper says 83 languages but its
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
    code = ALIASES.get(code, code)
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

# Mixture of Languages, Table 12: the 47 languages its per-language results cover (the paper's `ara_Arab` is Modern
# Standard Arabic, arb_Arab). MoL-90 on Table 11's tasks could be scored on 55 (the paper's Table 12 leaves out the
# subsets mteb tags with a macrolanguage code other than Arabic's (sqi, aze, mon, lav, swa, msa), Korean and
# Simplified Chinese); `--languages table12` restricts a comparison to exactly these.
TABLE_12 = [
    "afr_Latn", "amh_Ethi", "arb_Arab", "asm_Beng", "ben_Beng", "bul_Cyrl", "cym_Latn", "dan_Latn", "deu_Latn",
    "ell_Grek", "eng_Latn", "fin_Latn", "fra_Latn", "guj_Gujr", "heb_Hebr", "hin_Deva", "hun_Latn", "hye_Armn",
    "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kan_Knda", "kat_Geor", "khm_Khmr", "mal_Mlym",
    "mar_Deva", "mya_Mymr", "nld_Latn", "ory_Orya", "pan_Guru", "pol_Latn", "por_Latn", "ron_Latn", "rus_Cyrl",
    "san_Deva", "slv_Latn", "spa_Latn", "swe_Latn", "tam_Taml", "tel_Telu", "tha_Thai", "tur_Latn", "urd_Arab",
    "vie_Latn", "zho_Hant",
]
# The named language sets a comparison (evaluate_mol.py --languages) can be restricted to.
LANGUAGE_SETS = {**PRESETS, "table12": TABLE_12}

# The FLORES-200 codes that FLORES+ (openlanguagedata/flores_plus, the maintained FLORES on the Hub) relabelled: its
# config names (its README and CHANGELOG). Every other code is its own FLORES+ name.
# - the papers' four: Mandarin, Estonian, Filipino;
# - Guarani (gug, Paraguayan Guarani); Kikongo and Central Atlas Tamazight, whose data FLORES+ re-identified as
#   another language (kon_Latn as Kituba, ktu; tzm_Tfng as Standard Moroccan Tamazight, zgh): the same sentences
#   under a corrected label, so a FLORES-200 row reads them with that caveat (FLORES_PLUS_NOTES);
# - Akan and Twi, now two varieties of Twi (aka_Latn: Asante, twi_Latn: Akuapem), and South and North Levantine
#   Arabic, now two varieties of apc (ajp_Arab: South, apc_Arab: North): one code each, told apart by the variety's
#   glottocode in the config name (FLORES+'s naming for varieties; not checked against the Hub from here).
FLORES_PLUS_NAMES = {
    "zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", "est_Latn": "ekk_Latn", "tgl_Latn": "fil_Latn",
    "grn_Latn": "gug_Latn", "kon_Latn": "ktu_Latn", "tzm_Tfng": "zgh_Tfng",
    "aka_Latn": "twi_Latn_asan1239", "twi_Latn": "twi_Latn_akua1239",
    "ajp_Arab": "apc_Arab_sout3123", "apc_Arab": "apc_Arab_nort3139",
}
FLORES_PLUS_NOTES = {
    "kon_Latn": "FLORES+ re-identified this data as Kituba (ktu_Latn), not Kikongo",
    "tzm_Tfng": "FLORES+ re-identified this data as Standard Moroccan Tamazight (zgh_Tfng), not Central Atlas "
                "Tamazight",
    "aka_Latn": "FLORES+ labels it Twi (Asante variety)",
    "twi_Latn": "FLORES+ labels it Twi (Akuapem variety)",
    "ajp_Arab": "FLORES+ labels it Levantine Arabic, apc (South variety)",
    "apc_Arab": "FLORES+ labels it Levantine Arabic, apc (North variety)",
}


# Other names of a FLORES-200 row: the papers' slips, the FLORES+ renames, and NLLB's code for Santali (its model
# and tokenizer say `sat_Beng` for the Ol Chiki text FLORES-200 calls `sat_Olck`).
ALIASES = {**CODE_FIXES, **{plus: code for code, plus in FLORES_PLUS_NAMES.items() if plus not in FLORES_PLUS_NAMES},
           "sat_Beng": "sat_Olck"}


def flores_plus_name(code):
    """The FLORES+ config name of a FLORES-200 code."""
    return FLORES_PLUS_NAMES.get(code, code)


# Where each row's resource level comes from. The 104 rows of the papers: the Interference Matrix paper's Appendix B
# (its High/Low column, itself NLLB's), except the rows Appendix B leaves blank, which take the Mixture of Languages
# paper's Table 12. The other 100 rows: NLLB's Table 1, transcribed here without a copy at hand (unverified).
RESOURCE_FROM_TABLE_12 = ("zho_Hant", "mya_Mymr", "kan_Knda", "mal_Mlym", "tam_Taml", "tel_Telu")
PAPER_ROWS = 104


def resource_source(code):
    """The stated source of a language's resource level (High/Low)."""
    code = language(code).code
    if code == "zho_Hans":
        return "unsourced: neither paper gives it; High by analogy with zho_Hant (Table 12), the project's choice"
    if code in RESOURCE_FROM_TABLE_12:
        return "Mixture of Languages, Table 12 (Interference Matrix Appendix B gives none)"
    if list(language_table()).index(code) < PAPER_ROWS:
        return "Interference Matrix, Appendix B (NLLB's levels)"
    return "NLLB Team (2022), Table 1: transcribed without a copy at hand, unverified"


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


# ---- other spellings of a language: ISO 639-1, ISO 639-3, BCP 47, mteb's `xxx-Scrp` ------------------------------

# ISO 639-3 macrolanguages whose FLORES-200 rows are individual languages (SIL's iso-639-3-macrolanguages.tab,
# restricted to FLORES-200 members). The first member is the one FLORES-200 and NLLB use for the macrolanguage's
# standard form (Modern Standard Arabic for `ara`, Iranian Persian for `fas`, ...).
MACROLANGUAGE_MEMBERS = {
    "ara": ["arb", "ary", "arz", "acm", "acq", "aeb", "ajp", "apc", "ars"],
    "aze": ["azj", "azb"],
    "est": ["est", "ekk"],
    "fas": ["pes", "prs"],
    "grn": ["gug"],
    "kok": ["gom"],
    "kur": ["kmr", "ckb"],
    "lav": ["lvs", "ltg"],
    "mon": ["khk"],
    "msa": ["zsm", "ind", "min", "bjn"],
    "mlg": ["plt"],
    "nep": ["npi"],
    "nor": ["nob", "nno"],
    "orm": ["gaz"],
    "ori": ["ory"],
    "pus": ["pbt"],
    "sqi": ["als"],
    "swa": ["swh"],
    "uzb": ["uzn"],
    "yid": ["ydd"],
    "zho": ["zho", "yue"],
}
# Codes that mteb's task metadata uses for a language under another name: MASSIVE's Mandarin is `cmo-Hans` /
# `cmo-Hant` (ISO 639-3 `cmo` is Central Mnong, a slip), FLORES+ renamed Estonian `ekk`.
CODE_ALIASES = {"cmo": "zho", "ekk": "est"}
# The script a bare code means where FLORES-200 also has a transliteration of the same language.
PRIMARY_SCRIPTS = {"arb": "Arab"}
# Script codes that name the same writing as the FLORES row's: ISO 15924 `Kore` is Korean's Hangul + Han (mteb tags
# MASSIVE's Korean `kor-Kore`, STS17's `kor-Hang`; FLORES-200 has kor_Hang).
SCRIPT_ALIASES = {("kor", "Kore"): "Hang"}
# The script a region implies where a language is written in more than one (BCP 47 `zh-CN`, `zh-TW`).
REGION_SCRIPTS = {("zho", "CN"): "Hans", ("zho", "SG"): "Hans", ("zho", "TW"): "Hant", ("zho", "HK"): "Hant",
                  ("zho", "MO"): "Hant"}


@lru_cache(maxsize=None)
def _iso639_1_to_3():
    """ISO 639-1 -> ISO 639-3, from the table mteb ships (mteb.languages, itself from datasets/language-codes)."""
    import json
    from importlib.resources import files

    return json.loads(files("mteb.languages").joinpath("iso_639_1_to_3.json").read_text(encoding="utf-8"))


def parse_language_code(code):
    """(ISO 639-3 language, script or None) of `fra_Latn`, `fra-Latn`, `fra`, `fr`, `fr-FR`, `zh-TW`, `cmo-Hans`."""
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"A language code must be a non-empty string, got {code!r}.")
    parts = code.strip().replace("_", "-").split("-")
    language, rest = parts[0].lower(), parts[1:]
    if len(language) == 2:
        if language not in _iso639_1_to_3():
            raise ValueError(f"Unknown language code {code!r}: {language!r} is not an ISO 639-1 code.")
        language = _iso639_1_to_3()[language]
    elif len(language) != 3 or not language.isalpha():
        raise ValueError(
            f"Unknown language code {code!r}: use a FLORES code (fra_Latn), an ISO 639-1/639-3 code (fr, fra), "
            "or mteb's form (fra-Latn)."
        )
    language = CODE_ALIASES.get(language, language)
    script = None
    for part in rest:
        if len(part) == 4 and part.isalpha():
            script = part.title()
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            script = script or REGION_SCRIPTS.get((language, part.upper()))
        else:
            raise ValueError(f"Unknown language code {code!r}: {part!r} is neither a script nor a region.")
    return language, SCRIPT_ALIASES.get((language, script), script)


MACROLANGUAGE_RULES = ("any", "standard")


def resolve_language_code(code, known=None, macrolanguage="any"):
    """The FLORES code among `known` (default: the whole language table) that `code` names.

    `fra-Latn`, `fra_Latn`, `fra` and `fr` all give `fra_Latn`. A macrolanguage (`ara`, `fas`, `swa`, ...) names
    its standard member when that is known (ara -> arb_Arab); with macrolanguage="any" (the default) else its one
    known member, with "standard" (what an evaluation uses: Iranian Persian's data is never scored as Dari) never
    another member. Returns None when no known language matches; raises ValueError when several do (e.g. `zho`
    without a script), naming them.
    """
    if macrolanguage not in MACROLANGUAGE_RULES:
        raise ValueError(f"macrolanguage={macrolanguage!r} is unknown: use one of {list(MACROLANGUAGE_RULES)}.")
    known = list(language_table()) if known is None else list(known)
    code = ALIASES.get(code, code) if isinstance(code, str) else code
    if code in known:
        return code
    language, script = parse_language_code(code)
    members = MACROLANGUAGE_MEMBERS.get(language, [language])
    if macrolanguage == "standard":
        members = members[:1]
    candidates = [
        flores for flores in known
        if flores.split("_")[0] in {language, *members} and (script is None or flores.split("_")[-1] == script)
    ]
    if len(candidates) > 1:
        standard = [flores for flores in candidates if flores.split("_")[0] == members[0]]
        if len(standard) > 1 and script is None:  # `arb` alone is Arabic script, not FLORES-200's romanized row
            standard = [flores for flores in standard if PRIMARY_SCRIPTS.get(flores.split("_")[0]) in (None, flores.split("_")[1])]
        if len(standard) == 1:
            return standard[0]
        raise ValueError(
            f"Language code {code!r} is ambiguous: it could be any of {candidates}. Name one of them (with its script)."
        )
    return candidates[0] if candidates else None


def unresolved_reason(code, known):
    """Why `code` resolves to none of `known` under the evaluation's rule: names a macrolanguage's other members that
    are known but are not substituted."""
    language, script = parse_language_code(code)
    members = MACROLANGUAGE_MEMBERS.get(language)
    if members:
        others = [flores for flores in known if flores.split("_")[0] in members[1:]
                  and (script is None or flores.split("_")[-1] == script)]
        if others:
            standard = [f"{members[0]}_{script}" if script else members[0]]
            return (f"{code!r} is the macrolanguage {language!r}, scored only as its standard member {standard[0]}, "
                    f"which is not among the languages; {others} is another language and is not substituted")
    return f"{code!r} is not among the languages"
