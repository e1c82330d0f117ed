"""The language table covers FLORES-200: every code once, no empty field, the papers' rows unchanged, and the rest
of the toolkit (grouping, the sweep's configs, code resolution) takes any of them."""

import csv
import hashlib

import pytest

from mol_toolkit import grouping
from mol_toolkit.languages import (
    MOL_30,
    MOL_90,
    PRESETS,
    TABLE,
    language,
    language_table,
    resolve_language_code,
    resolve_languages,
)


# The 204 codes of FLORES-200 (facebookresearch/flores, flores200/README.md), written out independently of the table.
FLORES_200 = """
    ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn amh_Ethi apc_Arab arb_Arab arb_Latn
    ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn ban_Latn
    bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn ceb_Latn
    ces_Latn cjk_Latn ckb_Arab crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek eng_Latn
    epo_Latn est_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn gla_Latn
    gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn
    ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab
    kas_Deva kat_Geor knc_Arab knc_Latn kaz_Cyrl kbp_Latn kea_Latn khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn
    kmr_Latn kon_Latn kor_Hang lao_Laoo lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn lua_Latn
    lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Arab min_Latn mkd_Cyrl plt_Latn
    mlt_Latn mni_Beng khk_Cyrl mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nso_Latn nus_Latn
    nya_Latn oci_Latn gaz_Latn ory_Orya pag_Latn pan_Guru pap_Latn pes_Arab pol_Latn por_Latn prs_Arab pbt_Arab
    quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Olck scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn
    smo_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn als_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn
    swh_Latn szl_Latn tam_Taml tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi taq_Latn taq_Tfng tpi_Latn
    tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab uzn_Latn
    vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zho_Hans zho_Hant zsm_Latn zul_Latn""".split()
# sha256 of the header and the first 104 rows as the papers' table had them (before FLORES-200 was completed).
PAPER_ROWS_SHA256 = "9ff85bb98a89c619391ae2dec6986bb4be653d5a0a04a0d98157178a298b49f5"
FIELDS = ["code", "name", "script", "family", "superfamily", "resource"]


def rows():
    with open(TABLE, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_the_table_has_every_flores_200_code_exactly_once_with_no_empty_field():
    assert len(FLORES_200) == len(set(FLORES_200)) == 204
    table = rows()
    codes = [row["code"] for row in table]
    assert sorted(codes) == sorted(FLORES_200) and len(codes) == len(set(codes))
    for row in table:
        assert list(row) == FIELDS and all(row[field].strip() for field in FIELDS), row
        assert row["resource"] in ("High", "Low"), row
        assert row["code"].split("_")[1] in ("Latn", "Arab", "Cyrl", "Deva", "Beng", "Ethi", "Tibt", "Tfng", "Olck",
                                             "Mymr", "Hant", "Hans", "Hebr", "Grek", "Geor", "Armn", "Jpan", "Hang",
                                             "Khmr", "Laoo", "Thai", "Sinh", "Orya", "Gujr", "Guru", "Knda", "Mlym",
                                             "Taml", "Telu"), row
    assert len(language_table()) == 204


def test_the_papers_rows_are_unchanged_and_come_first():
    text = TABLE.read_text(encoding="utf-8").splitlines(keepends=True)
    assert hashlib.sha256("".join(text[:105]).encode()).hexdigest() == PAPER_ROWS_SHA256
    assert set(MOL_90) | set(MOL_30) <= {row["code"] for row in rows()[:104]}
    assert len(PRESETS["interference-83"]) == 90 and len(MOL_90) == 90 and len(MOL_30) == 30


def test_new_rows_resolve_with_their_values_and_aliases():
    assert language("sat_Olck").script == "Ol Chiki" and language("sat_Beng").code == "sat_Olck"
    assert language("yue_Hant").family == "Sinitic" and language("pes_Arab").resource == "High"
    assert language("cmn_Hans").code == "zho_Hans" and language("ekk_Latn").code == "est_Latn"
    assert language("fil_Latn").code == "tgl_Latn"
    assert resolve_language_code("fa") == "pes_Arab" and resolve_language_code("ara") == "arb_Arab"
    assert resolve_language_code("arb-Latn") == "arb_Latn" and resolve_language_code("quy") == "quy_Latn"
    with pytest.raises(ValueError, match="ambiguous: it could be any of \\['ace_Arab', 'ace_Latn'\\]"):
        resolve_language_code("ace")
    with pytest.raises(ValueError, match="Unknown language code 'xyz_Latn'"):
        language("xyz_Latn")


@pytest.mark.parametrize("attribute", ["family", "script"])
def test_grouping_takes_every_flores_200_language(attribute):
    codes = resolve_languages(FLORES_200)
    assert codes == FLORES_200
    groups = grouping.by_attribute(codes, attribute, 12).language_groups
    assert len(groups) == 12 and sorted(c for members in groups.values() for c in members) == sorted(FLORES_200)


def test_group_languages_command_and_a_model_config_take_the_new_languages(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import PROJECT

    from configuration_mol import MoLConfig

    codes = "quy_Latn,ayr_Latn,grn_Latn,yue_Hant,zho_Hant,sat_Olck,kas_Deva,hin_Deva"
    done = subprocess.run([sys.executable, str(PROJECT / "group_languages.py"), "--strategy", "linguistic",
                           "--languages", codes, "--num-groups", "3", "--out", str(tmp_path / "groups.json")],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    groups = json.loads((tmp_path / "groups.json").read_text())["language_groups"]
    config = MoLConfig(languages=codes.split(","), language_groups=groups, group_layers="stacked", num_hidden_layers=4,
                       hidden_size=32, num_attention_heads=2, intermediate_size=32, vocab_size=99)
    assert config.num_groups == 3


def test_flores_plus_relabels_resolve_to_their_flores_200_rows_with_their_notes():
    from mol_toolkit.languages import FLORES_PLUS_NOTES, flores_plus_name

    relabels = {"gug_Latn": "grn_Latn", "ktu_Latn": "kon_Latn", "zgh_Tfng": "tzm_Tfng",
                "twi_Latn_asan1239": "aka_Latn", "twi_Latn_akua1239": "twi_Latn",
                "apc_Arab_sout3123": "ajp_Arab", "apc_Arab_nort3139": "apc_Arab",
                "cmn_Hans": "zho_Hans", "ekk_Latn": "est_Latn", "fil_Latn": "tgl_Latn"}
    for plus, flores in relabels.items():
        assert resolve_language_code(plus) == flores and flores_plus_name(flores) == plus
    assert resolve_language_code("twi_Latn") == "twi_Latn" and resolve_language_code("apc_Arab") == "apc_Arab"
    assert "Kituba" in FLORES_PLUS_NOTES["kon_Latn"] and "Standard Moroccan" in FLORES_PLUS_NOTES["tzm_Tfng"]


def test_every_resource_level_has_a_stated_source_and_the_superfamily_names_its_classification():
    from mol_toolkit import languages
    from mol_toolkit.languages import resource_source

    sources = {code: resource_source(code) for code in language_table()}
    assert all(sources.values())
    assert sources["eng_Latn"].startswith("Interference Matrix, Appendix B")
    assert sources["zho_Hant"].startswith("Mixture of Languages, Table 12")
    assert sources["zho_Hans"].startswith("unsourced")
    assert "unverified" in sources["pes_Arab"]
    assert "Atlantic-Congo" in languages.__doc__ and "WALS" in languages.__doc__
    assert {row.superfamily for row in language_table().values() if row.family == "Benue-Congo"} == {"Niger-Congo"}
