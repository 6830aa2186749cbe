"""ISO 639 language codes: what users type (639-1 `ha` or 639-3 `hau`) -> one canonical code.

The canonical code is the ISO 639-1 code when the language has one, else the ISO 639-3
code. LID backends map their own labels (py3langid: 639-1, pycld2: 639-1 with a few
oddities, GlotLID: `__label__hau_Latn`) through `canonical()`. Macrolanguages list their
individual codes too (Nepali `ne` = `nep`/`npi`, Swahili `sw` = `swa`/`swh`, ...), because
GlotLID labels the individual language.
"""

from __future__ import annotations

from adaptkit.errors import InputError

# "639-1:639-3[,other 639-3 codes of the same language]:English name"
_TABLE = """
af:afr:Afrikaans am:amh:Amharic an:arg:Aragonese ar:ara,arb:Arabic as:asm:Assamese az:aze,azj:Azerbaijani
ba:bak:Bashkir be:bel:Belarusian bg:bul:Bulgarian bn:ben:Bengali bo:bod:Tibetan br:bre:Breton bs:bos:Bosnian
ca:cat:Catalan co:cos:Corsican cs:ces:Czech cy:cym:Welsh da:dan:Danish de:deu:German dv:div:Dhivehi
dz:dzo:Dzongkha ee:ewe:Ewe el:ell:Greek en:eng:English eo:epo:Esperanto es:spa:Spanish et:est,ekk:Estonian
eu:eus:Basque fa:fas,pes:Persian ff:ful,fuv:Fulah fi:fin:Finnish fj:fij:Fijian fo:fao:Faroese fr:fra:French
fy:fry:Western Frisian ga:gle:Irish gd:gla:Scottish Gaelic gl:glg:Galician gn:grn,gug:Guarani gu:guj:Gujarati
gv:glv:Manx ha:hau:Hausa he:heb,iw:Hebrew hi:hin:Hindi hr:hrv:Croatian ht:hat:Haitian Creole hu:hun:Hungarian
hy:hye:Armenian ia:ina:Interlingua id:ind:Indonesian ie:ile:Interlingue ig:ibo:Igbo ik:ipk:Inupiaq
is:isl:Icelandic it:ita:Italian iu:iku:Inuktitut ja:jpn:Japanese jv:jav,jw:Javanese ka:kat:Georgian
kk:kaz:Kazakh kl:kal:Kalaallisut km:khm:Khmer kn:kan:Kannada ko:kor:Korean ks:kas:Kashmiri ku:kur,kmr:Kurdish
ky:kir:Kyrgyz la:lat:Latin lb:ltz:Luxembourgish lg:lug:Ganda ln:lin:Lingala lo:lao:Lao lt:lit:Lithuanian
lv:lav,lvs:Latvian mg:mlg,plt:Malagasy mi:mri:Maori mk:mkd:Macedonian ml:mal:Malayalam mn:mon,khk:Mongolian
mr:mar:Marathi ms:msa,zsm:Malay mt:mlt:Maltese my:mya:Burmese na:nau:Nauru ne:nep,npi:Nepali nl:nld:Dutch
nn:nno:Norwegian Nynorsk no:nor,nob:Norwegian nr:nbl:South Ndebele ny:nya:Chichewa oc:oci:Occitan
om:orm,gaz:Oromo or:ori,ory:Odia os:oss:Ossetian pa:pan:Punjabi pl:pol:Polish ps:pus,pbt:Pashto
pt:por:Portuguese qu:que,quy:Quechua rm:roh:Romansh rn:run:Kirundi ro:ron:Romanian ru:rus:Russian
rw:kin:Kinyarwanda sa:san:Sanskrit sd:snd:Sindhi se:sme:Northern Sami sg:sag:Sango si:sin:Sinhala
sk:slk:Slovak sl:slv:Slovenian sm:smo:Samoan sn:sna:Shona so:som:Somali sq:sqi,als:Albanian sr:srp:Serbian
ss:ssw:Swati st:sot:Southern Sotho su:sun:Sundanese sv:swe:Swedish sw:swa,swh:Swahili ta:tam:Tamil
te:tel:Telugu tg:tgk:Tajik th:tha:Thai ti:tir:Tigrinya tk:tuk:Turkmen tl:tgl,fil:Tagalog tn:tsn:Tswana
to:ton:Tongan tr:tur:Turkish ts:tso:Tsonga tt:tat:Tatar tw:twi:Twi ug:uig:Uyghur uk:ukr:Ukrainian ur:urd:Urdu
uz:uzb,uzn,uzs:Uzbek ve:ven:Venda vi:vie:Vietnamese vo:vol:Volapuk wa:wln:Walloon wo:wol:Wolof xh:xho:Xhosa
yi:yid,ydd:Yiddish yo:yor:Yoruba za:zha:Zhuang zh:zho,cmn:Chinese zu:zul:Zulu
"""
# 639-3-only languages some backends label (py3langid, pycld2, GlotLID)
_TABLE_639_3 = """
ace:Acehnese ary:Moroccan Arabic arz:Egyptian Arabic bcl:Central Bikol ceb:Cebuano chr:Cherokee
crh:Crimean Tatar crs:Seselwa Creole ext:Extremaduran gaa:Ga gcf:Guadeloupean Creole gcr:Guianese Creole
gom:Goan Konkani grc:Ancient Greek guw:Gun haw:Hawaiian hbo:Ancient Hebrew hmn:Hmong kab:Kabyle kha:Khasi
kik:Kikuyu kri:Krio lij:Ligurian loz:Lozi ltg:Latgalian lua:Luba-Lulua luo:Luo mfe:Morisyen new:Newari
nso:Northern Sotho pam:Pampanga pcm:Nigerian Pidgin raj:Rajasthani sco:Scots sdh:Southern Kurdish
syr:Syriac tlh:Klingon tum:Tumbuka vec:Venetian war:Waray wuu:Wu Chinese yue:Cantonese
"""


def _build() -> tuple[dict[str, str], dict[str, str]]:
    aliases: dict[str, str] = {}
    names: dict[str, str] = {}
    for line in _TABLE.strip().splitlines():
        # entries are "a:b[,c]:Name words" separated by spaces; names may contain spaces
        for chunk in _split_entries(line):
            one, threes, name = chunk.split(":", 2)
            names[one] = name
            aliases[one] = one
            for code in threes.split(","):
                aliases.setdefault(code, one)
    for line in _TABLE_639_3.strip().splitlines():
        for chunk in _split_entries(line):
            code, name = chunk.split(":", 1)
            names[code] = name
            aliases.setdefault(code, code)
    return aliases, names


def _split_entries(line: str) -> list[str]:
    """Split 'af:afr:Afrikaans am:amh:Amharic ...' into entries (names may contain spaces)."""
    entries: list[str] = []
    for word in line.split(" "):
        if ":" in word or not entries:
            entries.append(word)
        else:
            entries[-1] += " " + word
    return entries


ALIASES, NAMES = _build()


def canonical(code: str) -> str | None:
    """The canonical code of `code` (639-1, 639-3, or `xxx_Scrp` with a script), or None."""
    text = code.strip()
    if text.startswith("__label__"):
        text = text[len("__label__"):]
    base = text.split("_")[0].split("-")[0].lower()
    return ALIASES.get(base)


def name_of(code: str) -> str:
    return NAMES.get(code, code)


def resolve_language(code: str, flag: str, available: list[str] | None = None) -> str:
    """Canonical code for a user's language flag; unknown codes get suggestions (InputError)."""
    found = canonical(code)
    if found is None and available is not None and code.strip().lower() in available:
        found = code.strip().lower()  # a language only the backend knows (e.g. one of GlotLID's 2000)
    if found is None or (available is not None and found not in available):
        from adaptkit.errors import did_you_mean

        pool = available if available is not None else sorted(NAMES)
        typed = code.strip().lower()
        by_name = [c for c in pool if len(typed) > 3 and NAMES.get(c, "").lower().startswith(typed[:4])]
        hint = f" (did you mean: {', '.join(by_name[:3])}?)" if by_name else did_you_mean(typed, pool)
        where = "this language identifier" if available is not None and found is not None else "ISO 639-1/639-3"
        raise InputError(
            f"{flag}: unknown language code '{code}' for {where}{hint}; expected an ISO 639-1 or 639-3 code such as en, ha, hau"
        )
    return found
