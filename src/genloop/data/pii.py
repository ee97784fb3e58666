"""PII scrubbing: replace e-mail addresses, phone numbers, IP addresses, payment card numbers, IBANs
and secrets with typed placeholders (`<EMAIL>`, `<PHONE>`, ...) before text reaches a model.

A model memorizes rare strings it sees in training, and a key or a phone number in its output is a
leak. But scrubbing that hits ordinary text (dates, versions, counts, commit ids) damages the data
for nothing, so every pattern is narrow and, where a check digit exists, validated: a card number
must pass Luhn, an IBAN mod-97. Decisions where text is ambiguous:

- IPv4: a dotted quad whose first part is at most 20 and whose parts are all below 100 is a version
  number (`2.7.2.2`, `1.2.99.2`, and so `1.2.3.4` too): changelogs are full of them, and
  addresses of that shape are about 0.5% of the IPv4 space. `v1.2.3.4` is never an address, three
  parts never match. Addresses that identify nobody stay: loopback, unspecified, multicast,
  reserved, netmasks, and the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
  2001:db8::/32). Private ranges (10/8, 192.168/16) are scrubbed like public ones.
- IPv6 needs a full first group (`2001:`, `fe80:`) or the `::ffff:` mapped form, so C++ `F1::F2`,
  times and MAC addresses are left alone; `ipaddress` validates every candidate.
- A 40-hex commit id, a UUID, a checksum or an ISBN is never touched; a secret is recognized by a
  known prefix (`AKIA`, `ghp_`, `sk-`, `xoxb-`, ...), a PEM private-key block, or a value after a
  name such as `api_key=`, `token:`, `password=` or `Bearer` that mixes letters and digits and has
  high entropy (only the value is replaced; templates like `${TOKEN}` and `<your-key>` stay).
- Phone numbers need a `+` country code, the North American 3-3-4 shape with `-`, `.` or `(555)`,
  or a trunk zero with a 4-digit group (`030 1234567`) or French pairs; and enough digits. Years,
  counts, times, dates, ZIP+4 codes, hex dumps, table rows and numbers inside URLs are not phones.
- Card numbers are 13-19 digits, contiguous or in the 4-4-4-4 / 4-6-5 groups cards print, begin
  like a real issuer (2-6) and pass Luhn; a millisecond timestamp (starts with 1), an id in a URL
  path or a cell in a row of numbers stays.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from genloop.errors import UserError

PII_KINDS: tuple[str, ...] = ("secret", "email", "iban", "credit_card", "ip", "phone")
"""Every kind `scrub` knows, in the order it applies them: secrets first (a key may contain an `@`
or digits), e-mail before IP and phone (a domain may hold digits), IBAN and cards before phone."""

Span = tuple[int, int]

PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>",
    "iban": "<IBAN>",
    "secret": "<SECRET>",
}


# ---------------------------------------------------------------------------------------------------
# Validators


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (one mistyped digit always fails it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move country and check digits to the end, letters to numbers, the result mod 97
    is 1. Also checks the shape: 15-34 characters, two letters, two digits, then letters or digits."""
    iban = iban.replace(" ", "").upper()
    if not (15 <= len(iban) <= 34 and iban[:2].isalpha() and iban[2:4].isdigit() and iban.isalnum()):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def shannon_entropy(value: str) -> float:
    """Bits per character: random keys score high (base64 ~5-6), words and templates low."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


# ---------------------------------------------------------------------------------------------------
# Patterns

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
# Candidates only; `ipaddress` decides. `::` compression and an IPv4 tail are allowed.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)

# Cards: contiguous 13-19 digits, or four groups of 4 (+ optional 3), or Amex/Diners 4-6-5 / 4-6-4.
_CARD = re.compile(
    r"(?<![\w/-])(?<!\d )(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([ -])\d{6}\2\d{4,5})"
    r"(?![\w-]| \d)"  # not one cell of a table of numbers
)

# IBAN: compact, or printed in groups of four separated by single spaces (last group 1-4).
_IBAN = re.compile(
    r"(?<![\w-])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![\w-])"
)

_PHONE = re.compile(
    r"(?<![\w+./-])(?<!\d )(?:"
    # international: +CC then 2-6 groups, an optional (0) or (area) in brackets
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d++){1,6}"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-1234 (not 555 123 4567:
    # three space-separated numbers are more often a row of a table)
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}([.-]))\d{3}(?(1)\1|[ .-])\d{4}"
    # national with a trunk zero: 030 1234567, 020 7946 0958, 06 12 34 56 78, 030/1234567
    r"|0\d{1,4}(?:[ /-]\d{2,8}){1,4}"
    r")(?![\w/-]|[.,]\d| \d)"  # not a run of a hex dump or a table
)

_SECRET_TOKEN = re.compile(
    r"(?<![\w-])(?:"
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{20,}(?:-[A-Za-z0-9_]+)*"  # OpenAI / Anthropic-style
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe secret / restricted
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT (a bearer credential)
    r")(?![\w-])"
)
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:[\s\S]*?-----END \1-----|(?:\r?\n[ \t]*[A-Za-z0-9+/=]{16,}+(?=[ \t]*(?:\r?\n|$)))*+)"
)
# A secret after a name: the scan starts at each `:` / `=` (fast), the name before it is checked after.
_ASSIGNMENT = re.compile(r"[:=][ \t]*[\"']?([^\s\"'`,;<>(){}\[\]]{8,})")
_SECRET_NAME = re.compile(
    r"(?i)(?:api[_-]?key|apikey|access[_-]?key|(?:private|secret|signing|encryption|master)[_-]?key|secret|"
    r"token|password|passwd|passphrase|pwd|credentials?)[\"']?[ \t]*\Z"
)
_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])bearer[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")
_PLACEHOLDER_HINTS = ("xxx", "***", "...", "your", "example", "placeholder", "changeme", "redacted", "dummy")


# ---------------------------------------------------------------------------------------------------
# Replacers: each returns the span of one match to replace (None when it is not PII)


def _email(m: re.Match[str]) -> Span | None:
    return m.span()


# Addresses that identify nobody: documentation examples (RFC 5737, RFC 3849), "this network";
# multicast and reserved ranges are checked through `ipaddress`.
_NOT_PERSONAL = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _personal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_loopback or address.is_unspecified or address.is_multicast or address.is_reserved:
        return False
    return not any(address.version == net.version and address in net for net in _NOT_PERSONAL)


def _ipv4(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    octets = text.split(".")
    numbers = [int(o) for o in octets]
    if numbers[0] <= 20 and max(numbers) < 100:  # 2.7.2.2, 1.2.99.2, 3.14.5.9: version numbers
        return None
    if octets[0] == "255":  # a netmask (255.255.255.0), not a host
        return None
    return m.span() if _personal(ipaddress.IPv4Address(text)) else None


def _ipv6(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    # Addresses in use start with a full group (2001:, 2a02:, fe80:, fd12:) or are IPv4-mapped
    # (::ffff:1.2.3.4); this keeps C++ `F1::F2`, `B<int>::c` and lists like 2:4:6:8:10:12:14:16 out.
    if not (text.lower().startswith("::ffff:") or re.match(r"[0-9A-Fa-f]{4}:", text)):
        return None
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None  # times (12:30:45), MAC addresses, ratios
    mapped = address.ipv4_mapped  # ::ffff:a.b.c.d is whoever a.b.c.d is
    return m.span() if _personal(mapped or address) else None


def _card(m: re.Match[str]) -> Span | None:
    digits = re.sub(r"\D", "", m.group(0))
    if digits[0] not in "23456" or not luhn_valid(digits):
        return None
    if digits[0] == "2" and not 2221 <= int(digits[:4]) <= 2720:  # Mastercard's 2-series
        return None
    return m.span()


def _iban(m: re.Match[str]) -> Span | None:
    """A printed IBAN may be followed by a capitalized word in groups-of-four shape; when the whole
    match fails mod-97, shorter prefixes ending on a group are tried before giving up."""
    text = m.group(0)
    while True:
        if iban_valid(text):
            return m.start(), m.start() + len(text)
        cut = text.rfind(" ")
        if cut < 0:
            return None
        text = text[:cut]


_ZIP4 = re.compile(r"\d{5}-\d{4}")
_DECIMAL = re.compile(r"\+\d+\.\d+")


def _phone(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    if _ZIP4.fullmatch(text) or _DECIMAL.fullmatch(text):  # US ZIP+4 (02110-1301), +35236450.6
        return None
    digits = sum(ch.isdigit() for ch in text)
    if text.startswith("+"):
        # E.164 allows 15 digits, but unseparated +12345678 is more likely a signed number and
        # +20191229111838 a timestamp: written without separators, a phone has 10-13 digits
        ok = 8 <= digits <= 15 if any(not ch.isdigit() for ch in text[1:]) else 10 <= digits <= 13
    elif text.startswith("0"):
        # a group of 4+ digits (030 1234567, 020 7946 0958) or French pairs (06 12 34 56 78); a row
        # of small numbers (041 117 132) is a table
        groups = re.split(r"[ /-]", text)
        # 00 00 00 00 00 and 01 02 03 04 05 are byte dumps, not numbers anyone dials
        pairs = [len(g) for g in groups] == [2] * 5 and groups[0] != "00"
        pairs = pairs and [int(g) for g in groups] != list(range(int(groups[0]), int(groups[0]) + 5))
        ok = 9 <= digits <= 12 and (pairs or any(len(g) >= 4 for g in groups[1:]))
    else:
        ok = digits in (10, 11)
    return m.span() if ok else None


def _secret_token(m: re.Match[str]) -> Span | None:
    token = m.group(0)
    if token.startswith("sk-") and not (any(c.isdigit() for c in token) and shannon_entropy(token) >= 3.5):
        return None  # hyphenated words after "sk-" are not keys; real keys are random base62
    return m.span()


def _pem(m: re.Match[str]) -> Span | None:
    return m.span()


def _secret_value(m: re.Match[str], is_password: bool) -> Span | None:
    """Replace group 1 when it looks like a real credential, not a word, a reference or a template."""
    value = m.group(1)
    lowered = value.lower()
    if value.startswith("<") or any(hint in lowered for hint in _PLACEHOLDER_HINTS):
        return None
    if "$" in value or "%" in value:  # ${TOKEN}, $API_KEY, %(password)s: a reference, not a value
        return None
    if len(value) < (8 if is_password else 16):
        return None
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return None  # words (Permission), identifiers (alice.computeSecret): keys mix letters and digits
    after = m.string[m.end(1) : m.end(1) + 1]
    if after == "(":  # password = strdup(...): code, not a value
        return None
    classes = sum(
        (any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value))
    ) + (not value.isalnum())
    if classes < 2 or shannon_entropy(value) < (2.5 if is_password else 3.0):
        return None
    return m.span(1)


def _assignment(m: re.Match[str]) -> Span | None:
    """`api_key=...`, `token: ...`, `"password": "..."`: only the value goes, the name stays."""
    name = _SECRET_NAME.search(m.string, max(0, m.start() - 48), m.start())
    if name is None:
        return None
    return _secret_value(m, is_password=re.search(r"(?i)pass|pwd", name.group(0)) is not None)


def _bearer(m: re.Match[str]) -> Span | None:
    return _secret_value(m, is_password=False)


Replacer = Callable[[re.Match[str]], "Span | None"]

_RULES: dict[str, tuple[tuple[re.Pattern[str], Replacer, Callable[[str], bool]], ...]] = {
    "secret": (
        (_PEM, _pem, lambda t: "-----BEGIN" in t),
        (_SECRET_TOKEN, _secret_token, lambda t: True),
        (_ASSIGNMENT, _assignment, lambda t: True),
        (_BEARER, _bearer, lambda t: True),
    ),
    "email": ((_EMAIL, _email, lambda t: "@" in t),),
    "iban": ((_IBAN, _iban, lambda t: True),),
    "credit_card": ((_CARD, _card, lambda t: True),),
    # IPv6 first, so that an IPv4-mapped address (::ffff:192.0.2.1) is replaced whole
    "ip": ((_IPV6, _ipv6, lambda t: "::" in t or t.count(":") >= 7), (_IPV4, _ipv4, lambda t: "." in t)),
    "phone": ((_PHONE, _phone, lambda t: True),),
}


def check_kinds(kinds: Iterable[str] | None) -> tuple[str, ...]:
    """The kinds to scrub in application order; None means all. Unknown kinds are a UserError."""
    if kinds is None:
        return PII_KINDS
    if isinstance(kinds, str):
        kinds = [kinds]
    wanted = list(kinds)
    unknown = [k for k in wanted if k not in PLACEHOLDERS]
    if unknown:
        raise UserError(f"unknown PII kind(s) {', '.join(map(repr, unknown))}; known: {', '.join(PII_KINDS)}")
    return tuple(k for k in PII_KINDS if k in wanted)


@dataclass(frozen=True)
class PiiMatch:
    """One piece of PII found: `text[start:end]` (in the text given) is replaced by `placeholder`."""

    start: int
    end: int
    kind: str

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.kind]


def redact(text: str, kinds: Iterable[str] | None = None) -> tuple[str, list[PiiMatch]]:
    """Replace PII with typed placeholders; returns the new text and where the matches were in the
    text given, sorted. Kinds run one after another on the text the earlier ones produced (a
    placeholder is opaque to later kinds), so spans are mapped back to the original coordinates.

    This is the one implementation of PII detection: `scrub` (data) and `genloop.postprocess`
    (generated text, whole and streamed) both call it."""
    # spans in the current text: [cur_start, cur_end, orig_start, orig_end, kind], sorted
    spans: list[list[Any]] = []
    for kind in check_kinds(kinds):
        placeholder = PLACEHOLDERS[kind]
        for pattern, replacer, worth_trying in _RULES[kind]:
            if not worth_trying(text):
                continue
            found = [span for m in pattern.finditer(text) if (span := replacer(m)) is not None]
            if found:
                text, spans = _replace(text, spans, found, kind, placeholder)
    return text, [PiiMatch(s[2], s[3], s[4]) for s in spans]


def _replace(
    text: str, spans: list[list[Any]], found: list[Span], kind: str, placeholder: str
) -> tuple[str, list[list[Any]]]:
    """Apply one pass's replacements (sorted, disjoint spans of `text`) and keep the map to the original."""

    def to_original(pos: int, end: bool) -> int:
        offset = 0
        for cs, ce, os_, oe, _ in spans:
            if ce <= pos:
                offset += (oe - os_) - (ce - cs)
            elif cs < pos:  # inside an earlier placeholder: the whole of it
                return oe if end else os_
            else:
                break
        return pos + offset

    pieces: list[str] = []
    merged: list[list[Any]] = []
    last = 0
    shift = 0  # current-text length change so far in this pass
    old = iter(spans)
    pending = next(old, None)
    for start, end in found:
        while pending is not None and pending[1] <= start:
            merged.append([pending[0] + shift, pending[1] + shift, *pending[2:]])
            pending = next(old, None)
        os_, oe = to_original(start, False), to_original(end, True)
        while pending is not None and pending[0] < end:  # swallowed by this match
            pending = next(old, None)
        pieces.append(text[last:start])
        pieces.append(placeholder)
        new_start = start + shift
        shift += len(placeholder) - (end - start)
        merged.append([new_start, new_start + len(placeholder), os_, oe, kind])
        last = end
    while pending is not None:
        merged.append([pending[0] + shift, pending[1] + shift, *pending[2:]])
        pending = next(old, None)
    pieces.append(text[last:])
    return "".join(pieces), merged


def find(text: str, kinds: Iterable[str] | None = None) -> list[PiiMatch]:
    """Where the PII in `text` is (see `redact`)."""
    return redact(text, kinds)[1]


def scrub(text: str, kinds: Iterable[str] | None = None) -> tuple[str, dict[str, int]]:
    """Replace PII with typed placeholders; returns the new text and the replacements per kind (every
    requested kind is a key, with 0 when nothing was found). Text that is not PII is left byte-for-byte."""
    wanted = check_kinds(kinds)
    new, matches = redact(text, wanted)
    counts = dict.fromkeys(wanted, 0)
    for m in matches:
        counts[m.kind] += 1
    return new, counts
