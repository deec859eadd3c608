"""The automatic screen of a review's text (:class:`TextScreener`, the hub's ``Screener``), run by the
store on every create and edit: offline and deterministic (no I/O, clock, randomness or model; the word
lists are in this module). The store adds its own signals (duplicate_text, posting_rate, no_rating).

Verdict: ``REJECT`` if a reason is ``profanity``, else ``HOLD`` (a person decides) if there is any reason,
else ``PUBLISH`` with no reasons (the store holds a published screening that has any). Reasons are sorted
and unique, from :data:`REASONS`. A text that is missing or blank publishes (a rating-only review).

* ``profanity`` (reject): a slur or hate term of the severe list. ``profanity_mild`` (hold): swearing,
  the few slurs with an innocent reading ("fag", "spic", "retard": retards ageing), and any masked word
  (``f*ck``, ``n*gger``: the writer self-censored, and ``s**t`` is ambiguous). Words of plain complaint
  (crap, damn, hell, sucks, bloody) are not listed: an honest bad review is not held for its tone.
* ``link``: ``http(s)://``, ``www.``, a bare domain of a common top-level domain written in lower case
  (``shop.co.uk``; "Great.Com" is a missing space; not in/it/me/us, which are words), ``shop [dot] com``.
* ``contact_email``: an address; ``name at mail dot com``, ``name [at] mail [dot] com``.
* ``contact_phone``: 7 to 15 digits in groups (``555-123-4567``, ``(555) 123 4567``, ``+44 20 7946
  0958``, ``06 12 34 56 78``) or 10 to 11 in one run. Not: counts and sizes ("2 weeks", "50 ml", "36 38
  40 42 44"), years and ranges ("2019-2023"), dates ("15.01.2024"), thousands ("1 299 000").
* ``repeated_characters``: punctuation 6+ times in a row (``!!!!!!``); a letter, emoji or other symbol
  10+ times (``sooooooo good``, 8, is ordinary enthusiasm); digits never (1000000).
* ``repeated_words``: one word 5+ times in a row. ``shouting``: 30+ cased letters, 75% of them capitals.

Markup is not a moderation matter: ``<script>alert(1)</script>`` publishes (text is escaped where it is
shown; the screen is not a sanitiser); a URL inside markup holds for ``link`` like any other.

Matching. The text is folded (casefold, NFKD, accents and invisible format characters such as zero-width
spaces dropped, a few Cyrillic and Greek look-alikes mapped to Latin) and cut into words. A word is
flagged only if it *is* a listed word, or a listed stem plus a common suffix ("fucking", "bitchy"), as
written, after leetspeak folding (0→o 1→i/l 3→e 4→a 5→s 6→g 7→t 8→b 9→g @→a $→s !→i; digits only in a
word with at least two letters and as many letters as digits, so "a55" stays a phone model), with
repeated letters squeezed ("fuuuuck", "asssss"), or with ``*`` for hidden letters between a visible first
and last one. Whole-word matching avoids the Scunthorpe problem: scunthorpe, assess, class, cocktail,
shiitake, therapist, analysis, cumin, dickens are never flagged for what they contain. A run of single
letters (``f u c k``, ``s.h.i.t``, ``b-i-t-c-h``, up to 24) is joined and matched, also without a
leading "a" or "I". :data:`ALLOWED` words are never flagged (a net under the suffix rule and a
deployment's own stems: "cum*" would otherwise take "cumin").

Why our own list, not a library (PyPI pages and issue trackers read when this was written):
better-profanity has one tier (~320 English words; its 0.5 README: expanded to every leetspeak variant
in memory, ~107,000 entries, ~10 MB), so it cannot tell a slur from swearing, and an open issue (#19)
reports its newest release, 0.7.0, far slower than 0.6.1; profanity-check and alt-profanity-check are a
scikit-learn linear SVM (a pickled model per scikit-learn version; the fork calls the original not well
maintained) that gives a probability, not a reason a moderator can read. Sixty-odd entries we own give two
tiers, reason codes and no dependency.

Misses: other languages; spellings outside the folding (``f.ck``, ``sh it``, ``fukc``); words glued
together ("youfuckingidiot"); masks that hide the first or last letter (``***k``, ``f***``); slurs not
listed because their innocent meanings are common (chink, coon, dyke); insults and threats without a
listed word; spam without repetition; links and numbers spelled out ("five five five ..."); phone
numbers of 7 to 9 digits in one run; images (``media_count`` is not judged).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable
from itertools import groupby, repeat

from storage.reviews import Screening, Verdict

REASONS = frozenset({
    "profanity", "profanity_mild", "link", "contact_email", "contact_phone", "repeated_characters",
    "repeated_words", "shouting",
})  # fmt: skip
REJECT_REASONS = frozenset({"profanity"})

# "word*" is a stem that also matches with STEM_SUFFIXES; a plain word also matches its plural.
SEVERE = (
    "nigger*", "nigga*", "niggaz", "faggot*", "kike*", "wetback*", "raghead*", "towelhead*",
    "gook*", "paki*", "golliwog*", "jigaboo*", "zipperhead*", "beaner*",
)  # fmt: skip
SEVERE_PHRASES = re.compile(r"\b(?:sieg\W+heil|heil\W+hitler)\b")
MILD = (
    "fuck*", "fck", "fuk*", "fvck*", "phuck*", "phuk*", "motherfuck*", "clusterfuck*", "shit*", "shite",
    "bullshit*", "horseshit*", "dipshit*", "bitch*", "biatch*", "bastard*", "cunt*", "twat*", "wank*",
    "tosser", "whore*", "slut*", "asshole*", "arsehole*", "ass", "arse", "jackass", "dumbass*", "dick",
    "dickhead*", "cock", "cocksuck*", "pussy", "pussies", "tits", "piss*", "bollocks", "bellend*",
    "douchebag*", "wtf", "stfu", "fag", "spic", "retard*", "tranny", "trannies", "spastic*", "spaz",
    "shemale*",
)  # fmt: skip
STEM_SUFFIXES = (
    "", "s", "es", "e", "ed", "er", "ers", "ing", "in", "y", "ty", "ting", "ter", "ters", "ted", "tard",
    "head", "heads", "face", "wit", "hole", "holes", "bag", "bags", "ery",
)  # fmt: skip
ALLOWED = frozenset(
    {
        "scunthorpe", "assess", "class", "classic", "cocktail", "shiitake", "shitake", "therapist",
        "analysis", "cumin", "dickens", "grape", "pakistan", "pakistani", "retardant", "sussex", "essex",
        "middlesex", "cockpit", "peacock", "hancock",
    }
)  # fmt: skip
_PUNCT_RUN, _OTHER_RUN, _WORD_RUN = 6, 10, 5
_SHOUT_LETTERS, _SHOUT_SHARE = 30, 0.75

_MARKS = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
                    r"\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")  # fmt: skip
_LOOKALIKES = str.maketrans("аеорсухіѕјԁαεικνοτυ", "aeopcyxisjdaeikvotu")
_LEET = str.maketrans("@$!", "asi")
_DIGITS_I, _DIGITS_L = str.maketrans("013456789", "oieasgtbg"), str.maketrans("013456789", "oleasgtbg")
_TOKEN = re.compile(r"(?:[^\W_]|[@$!*])+")
_LETTERS = re.compile(r"[^\W\d_]+")
_RUN2, _RUN3 = re.compile(r"(.)\1+"), re.compile(r"(.)\1{2,}")
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W\d_][ ._\-]{1,2}){2,}[^\W\d_](?![^\W_])")
_SPACED_SEP = re.compile(r"[ ._\-]+")
_SAME_CHAR = re.compile(r"(\S)\1{5,}")
_SPACED_GATE = re.compile(r"\s[^\W\d_][.\-_,]?\s+[^\W\d_][.\-_,]?\s+[^\W\d_](?![^\W_])")
_EDGE_PUNCT = ".,;:!?()[]{}\"'«»“”‘’…-"
_ASCII_UPPER, _ASCII_LOWER = string.ascii_uppercase.encode(), string.ascii_lowercase.encode()

_TLDS = (
    "com|net|org|edu|gov|info|biz|io|co|uk|de|fr|es|nl|ru|cn|jp|br|au|ca|ch|eu|pl|se|tv|"
    "cc|ws|su|ly|gl|tk|ml|ga|cf|gq|xyz|top|site|online|shop|store|app|dev|club|live|link|click|vip"
)
_URL = re.compile(r"\b(?:https?|ftp)://|(?<![\w.-])www\d{0,3}\.[a-z0-9-]")
_DOMAIN = re.compile(rf"(?<![A-Za-z0-9-])[A-Za-z0-9-]{{1,63}}\.(?:{_TLDS})(?![A-Za-z0-9-])")
_DOMAIN_ANY_CASE = re.compile(_DOMAIN.pattern, re.IGNORECASE)
_DOMAIN_SPELLED = re.compile(
    rf"(?<![a-z0-9-])[a-z0-9-]{{2,63}}(?:\s?[\[(]\s?dot\s?[\])]\s?(?:{_TLDS})|\s+dot\s+(?:com|net|org))\b"
)
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.+-])[\w.+-]{1,64}(?:\s?[\[(]\s?at\s?[\])]\s?|\s+at\s+)[\w-]{1,63}"
    rf"(?:\s?[\[(]\s?dot\s?[\])]\s?|\s+dot\s+|\.)(?:{_TLDS})\b"
)
_PHONE = re.compile(r"(?<![\w+])(?:\+\s?)?(?:\(\d{1,5}\)\s?)?\d{1,15}(?:[ .\-]\(?\d{1,15}\)?)*(?!\w)")
_PHONE_SPAN = re.compile(r"(?:\+\s?|\()?\d[\d\s().\-]{5,}\d")
_DIGIT_GROUP = re.compile(r"\d+")
_YEAR = re.compile(r"(?:19|20)\d\d")


def _fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    return _MARKS.sub("", unicodedata.normalize("NFKD", text.casefold())).translate(_LOOKALIKES)


def _forms(entries: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for entry in entries:
        word = _fold(entry.strip())
        if word.endswith("*"):
            if word[:-1]:
                out.update(word[:-1] + suffix for suffix in STEM_SUFFIXES)
        elif word:
            sibilant = word.endswith(("s", "x", "z", "sh", "ch"))
            out.update((word, word + "s", word + "es" if sibilant else word))
    return out


def _is_phone(span: str) -> bool:
    groups: list[str] = _DIGIT_GROUP.findall(span)
    digits = sum(map(len, groups))
    if not 7 <= digits <= 15:
        return False
    if span.startswith(("+", "(")):
        return True
    if len(groups) == 1:
        return 10 <= digits <= 11
    if len(groups) <= 3 and all(len(g) <= 2 or _YEAR.fullmatch(g) for g in groups):
        return False  # a date, a range of years
    if len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
        return False  # thousands
    if "-" in span or "." in span:
        return True
    if all(len(g) <= 2 for g in groups):  # "06 12 34 56 78", not sizes "36 38 40 42 44"
        return groups[0].startswith("0")
    return digits >= 9 and all(len(g) >= 2 for g in groups[1:])


class TextScreener:
    """The Screener: ``TextScreener()(text, rating, media_count) -> Screening``. ``blocked_words`` are
    added to the severe list (reject), ``held_words`` to the mild one (hold), ``allowed_words`` to
    :data:`ALLOWED`: single words, folded as the text is (case, accents); one ending in ``*`` is a stem
    (see :data:`STEM_SUFFIXES`). Rating and media are not judged here."""

    def __init__(
        self,
        *,
        blocked_words: Iterable[str] = (),
        held_words: Iterable[str] = (),
        allowed_words: Iterable[str] = (),
    ) -> None:
        self._allowed = ALLOWED | {_fold(w.strip()) for w in allowed_words}
        severe = _forms((*SEVERE, *blocked_words))
        self._tier: dict[str, int] = {w: 1 for w in _forms((*MILD, *held_words)) - self._allowed}
        self._tier.update({w: 2 for w in severe - self._allowed})
        self._masked: dict[tuple[int, str, str], list[str]] = {}
        for form in self._tier:
            if len(form) >= 3:
                self._masked.setdefault((len(form), form[0], form[-1]), []).append(form)
        self._ends = frozenset(form[0] + form[-1] for form in self._tier)
        self._letters = frozenset(map(frozenset, self._tier))
        self._squeezed = frozenset("".join(letter for letter, _ in groupby(form)) for form in self._tier)

    def __call__(self, text: str | None, rating: int | None, media_count: int) -> Screening:
        reasons: set[str] = set()
        if text and not text.isspace():
            # Most checks look at each distinct whitespace-separated chunk once; the few patterns that
            # span whitespace (spaced letters, phone numbers, spelled-out addresses) are gated by a
            # cheap test first, so a long ordinary review costs little.
            folded = _fold(text)
            chunks = folded.split()
            unique = set(chunks)
            self._words(folded, unique, reasons)
            _contacts(folded, text, unique, reasons)
            _spam(text, chunks, unique, reasons)
        verdict = Verdict.REJECT if reasons & REJECT_REASONS else Verdict.HOLD if reasons else Verdict.PUBLISH
        return Screening(verdict, tuple(sorted(reasons)))

    def _lookup(self, word: str) -> int:
        """A folded word's tier: as written, or with its repeated letters squeezed to two or one."""
        # Squeezing keeps a word's ends and its set of letters: most words stop at these two tests.
        if word[0] + word[-1] not in self._ends or frozenset(word) not in self._letters:
            return 0
        if word in self._allowed:
            return 0
        tier = self._tier.get(word, 0)
        if _RUN2.search(word):
            runs = [(letter, len(list(group))) for letter, group in groupby(word)]
            once = "".join(letter for letter, _ in runs)
            if once in self._squeezed:
                for form in ("".join(letter * min(n, 2) for letter, n in runs), once):
                    if form not in self._allowed:
                        tier = max(tier, self._tier.get(form, 0))
        return tier

    def _token(self, token: str) -> int:
        core = token.strip("!*")
        if len(core) < 2 or core in self._allowed:
            return 0
        if core.isalpha():
            return self._lookup(core)
        tier = max((self._lookup(piece) for piece in _LETTERS.findall(core)), default=0)
        mapped = core.translate(_LEET)
        letters, digits = sum(map(str.isalpha, mapped)), sum(map(str.isdigit, mapped))
        variants = [mapped]
        if digits and letters >= 2 and letters >= digits:
            variants = [mapped.translate(_DIGITS_I), mapped.translate(_DIGITS_L)]
        for variant in variants:
            if "*" not in variant:
                tier = max(tier, self._lookup(variant))
            elif variant[0] != "*" and variant[-1] != "*" and variant.replace("*", "").isalpha():
                for form in self._masked.get((len(variant), variant[0], variant[-1]), ()):
                    if all(c in ("*", f) for c, f in zip(variant, form, strict=True)):
                        tier = max(tier, 1)  # a masked word is held whatever it masks
        return tier

    def _spaced(self, run: str) -> int:
        letters = _SPACED_SEP.sub(" ", run).split(" ")
        if len(letters) > 24:  # no listed word is that long: a run of initials or noise
            return 0
        tier = self._lookup("".join(letters))
        for start, letter in enumerate(letters[:-3]):  # "a f u c k", "i s h i t"
            if letter not in ("a", "i"):
                break
            tier = max(tier, self._lookup("".join(letters[start + 1 :])))
        return tier

    def _words(self, folded: str, unique: set[str], reasons: set[str]) -> None:
        tier = 0
        for chunk in unique:
            word = chunk.strip(_EDGE_PUNCT)
            if word.isalpha():
                tier = max(tier, self._lookup(word))
                continue
            for token in set(_TOKEN.findall(word)):
                tier = max(tier, self._lookup(token) if token.isalpha() else self._token(token))
            if "." in word or "-" in word or "_" in word:
                tier = max(tier, max(map(self._spaced, _SPACED.findall(word)), default=0))
        if _SPACED_GATE.search(" " + folded):  # three single letters in a row, the first one spaced
            tier = max(tier, max(map(self._spaced, _SPACED.findall(folded)), default=0))
        if tier == 2 or ("heil" in folded and SEVERE_PHRASES.search(folded)):
            reasons.add("profanity")
        elif tier == 1:
            reasons.add("profanity_mild")


def _contacts(folded: str, text: str, unique: set[str], reasons: set[str]) -> None:
    domain = False
    for chunk in unique:
        rest = chunk
        if "@" in chunk and _EMAIL.search(chunk):
            reasons.add("contact_email")
            rest = _EMAIL.sub(" ", chunk)
        if ("://" in rest or "www" in rest) and _URL.search(rest):
            reasons.add("link")
        domain = domain or ("." in rest and _DOMAIN_ANY_CASE.search(rest) is not None)
    if domain:  # confirmed on the text as written: a domain's top level is in lower case
        bare = text if text.isascii() else unicodedata.normalize("NFKC", text)
        if _DOMAIN.search(_EMAIL.sub(" ", bare) if "@" in bare else bare):
            reasons.add("link")
    if "dot" in folded or "at]" in folded or "at)" in folded:
        if _EMAIL_SPELLED.search(folded):
            reasons.add("contact_email")
            folded = _EMAIL_SPELLED.sub(" ", folded)
        if _DOMAIN_SPELLED.search(folded):
            reasons.add("link")
    if sum(map(folded.count, "0123456789")) >= 7:
        for span in _PHONE_SPAN.finditer(folded):  # where 7+ digits could be: the exact pattern is slow
            if any(_is_phone(m.group()) for m in _PHONE.finditer(folded, span.start(), span.end() + 1)):
                reasons.add("contact_phone")
                break


def _spam(text: str, chunks: list[str], unique: set[str], reasons: set[str]) -> None:
    for chunk in unique:
        match = _SAME_CHAR.search(chunk) if len(chunk) >= _PUNCT_RUN else None
        while match is not None:
            char, length = match.group(1), len(match.group())
            if not char.isdigit():
                punct = unicodedata.category(char).startswith("P")
                if length >= (_PUNCT_RUN if punct else _OTHER_RUN):
                    reasons.add("repeated_characters")
                    break
            match = _SAME_CHAR.search(chunk, match.end())
    words = list(filter(None, map(str.strip, chunks, repeat(_EDGE_PUNCT))))
    if b"\x01" * (_WORD_RUN - 1) in bytes(map(str.__eq__, words, words[1:])):
        reasons.add("repeated_words")
    if text.isascii():
        raw = text.encode()
        capitals = len(raw) - len(raw.translate(None, _ASCII_UPPER))
        small = len(raw) - len(raw.translate(None, _ASCII_LOWER))
    else:
        capitals, small = sum(map(str.isupper, text)), sum(map(str.islower, text))
    if capitals + small >= _SHOUT_LETTERS and capitals >= _SHOUT_SHARE * (capitals + small):
        reasons.add("shouting")
