"""Language names and codes: ``--language ko`` and ``--language Korean`` mean the same thing.

A language is kept as its English name ("Korean"), because that is what a prompt should say
("Write the question in Korean") and what a reader of a row's ``meta.language`` understands.
ISO 639-1 codes ("ko"), a few ISO 639-2/3 codes ("kor") and BCP 47 tags ("pt-BR", "zh-TW") are
turned into names; anything else ("Old Norse", "한국어") is used as given, since the teacher reads
it. ``language_code`` goes the other way, for filters that detect the language of a text.
"""

from __future__ import annotations

# ISO 639-1 code -> English name (the languages a teacher model is likely to write well, and more).
_NAMES: dict[str, str] = {
    "af": "Afrikaans",
    "am": "Amharic",
    "ar": "Arabic",
    "as": "Assamese",
    "az": "Azerbaijani",
    "be": "Belarusian",
    "bg": "Bulgarian",
    "bn": "Bengali",
    "bo": "Tibetan",
    "bs": "Bosnian",
    "ca": "Catalan",
    "cs": "Czech",
    "cy": "Welsh",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "eo": "Esperanto",
    "es": "Spanish",
    "et": "Estonian",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fil": "Filipino",
    "fr": "French",
    "ga": "Irish",
    "gl": "Galician",
    "gu": "Gujarati",
    "ha": "Hausa",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "ht": "Haitian Creole",
    "hu": "Hungarian",
    "hy": "Armenian",
    "id": "Indonesian",
    "ig": "Igbo",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "jv": "Javanese",
    "ka": "Georgian",
    "kk": "Kazakh",
    "km": "Khmer",
    "kn": "Kannada",
    "ko": "Korean",
    "ku": "Kurdish",
    "ky": "Kyrgyz",
    "la": "Latin",
    "lb": "Luxembourgish",
    "lo": "Lao",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mg": "Malagasy",
    "mi": "Maori",
    "mk": "Macedonian",
    "ml": "Malayalam",
    "mn": "Mongolian",
    "mr": "Marathi",
    "ms": "Malay",
    "mt": "Maltese",
    "my": "Burmese",
    "nb": "Norwegian Bokmål",
    "ne": "Nepali",
    "nl": "Dutch",
    "nn": "Norwegian Nynorsk",
    "no": "Norwegian",
    "ny": "Chichewa",
    "or": "Odia",
    "pa": "Punjabi",
    "pl": "Polish",
    "ps": "Pashto",
    "pt": "Portuguese",
    "qu": "Quechua",
    "ro": "Romanian",
    "ru": "Russian",
    "rw": "Kinyarwanda",
    "sa": "Sanskrit",
    "sd": "Sindhi",
    "si": "Sinhala",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sm": "Samoan",
    "sn": "Shona",
    "so": "Somali",
    "sq": "Albanian",
    "sr": "Serbian",
    "st": "Sesotho",
    "su": "Sundanese",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "te": "Telugu",
    "tg": "Tajik",
    "th": "Thai",
    "ti": "Tigrinya",
    "tk": "Turkmen",
    "tl": "Tagalog",
    "tr": "Turkish",
    "tt": "Tatar",
    "ug": "Uyghur",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "vi": "Vietnamese",
    "xh": "Xhosa",
    "yi": "Yiddish",
    "yo": "Yoruba",
    "zh": "Chinese",
    "zu": "Zulu",
}

# Three-letter codes people use as often as the two-letter ones.
_ALIASES: dict[str, str] = {
    "ara": "ar",
    "chi": "zh",
    "deu": "de",
    "eng": "en",
    "fra": "fr",
    "fre": "fr",
    "ger": "de",
    "heb": "he",
    "hin": "hi",
    "ita": "it",
    "jpn": "ja",
    "kor": "ko",
    "nld": "nl",
    "per": "fa",
    "fas": "fa",
    "pol": "pl",
    "por": "pt",
    "rus": "ru",
    "spa": "es",
    "swe": "sv",
    "tha": "th",
    "tur": "tr",
    "ukr": "uk",
    "vie": "vi",
    "zho": "zh",
    "iw": "he",  # the old code, still sent by some systems
    "in": "id",
}

# Tags whose region or script changes what a writer does.
_TAGS: dict[str, str] = {
    "zh-cn": "Simplified Chinese",
    "zh-sg": "Simplified Chinese",
    "zh-hans": "Simplified Chinese",
    "zh-tw": "Traditional Chinese",
    "zh-hk": "Traditional Chinese",
    "zh-hant": "Traditional Chinese",
    "pt-br": "Brazilian Portuguese",
    "pt-pt": "European Portuguese",
    "en-us": "American English",
    "en-gb": "British English",
    "es-mx": "Mexican Spanish",
    "es-es": "European Spanish",
    "fr-ca": "Canadian French",
}

_BY_NAME: dict[str, str] = {name.casefold(): code for code, name in _NAMES.items()}
_BY_NAME.update({name.casefold(): tag for tag, name in _TAGS.items()})


def language_name(value: str) -> str:
    """The English name of a language given by name, code or tag; unknown values as given.

    ``language_name("ko") == language_name("KOR") == language_name("korean") == "Korean"``.
    """
    text = " ".join(value.split())
    key = text.casefold().replace("_", "-")
    if key in _TAGS:
        return _TAGS[key]
    code = _ALIASES.get(key, key)
    if code in _NAMES:
        return _NAMES[code]
    if key in _BY_NAME:  # a name in other capitalisation
        found = _BY_NAME[key]
        return _TAGS.get(found) or _NAMES[found]
    base, _, region = key.partition("-")
    base = _ALIASES.get(base, base)
    if region and base in _NAMES:
        return f"{_NAMES[base]} ({text.split('-', 1)[1].replace('_', '-')})"
    return text


def language_code(value: str) -> str | None:
    """The ISO 639-1 code of a language given by name, code or tag; None when unknown."""
    name = language_name(value)
    found = _BY_NAME.get(name.casefold())
    if found is None:
        base = name.split(" (", 1)[0].casefold()
        found = _BY_NAME.get(base)
    return None if found is None else found.split("-", 1)[0]
