"""PII scrubbing: per kind, a table of texts that must be replaced and look-alikes that must survive
unchanged (invalid checksums, versions, dates, hashes, tables); a mixed paragraph; the counts."""

from __future__ import annotations

import pytest

from genloop.data.pii import PII_KINDS, PLACEHOLDERS, iban_valid, luhn_valid, scrub
from genloop.errors import UserError

# (kind, text, expected): `expected` is the text after scrubbing that kind alone
POSITIVE = [
    ("email", "jane.doe@example.com", "<EMAIL>"),
    ("email", "write to J.Smith+news@mail.example.co.uk.", "write to <EMAIL>."),
    ("email", "<x_y-z@sub.domain.org>", "<<EMAIL>>"),
    ("phone", "(555) 123-4567", "<PHONE>"),
    ("phone", "call 555-123-4567 now", "call <PHONE> now"),
    ("phone", "555.123.4567", "<PHONE>"),
    ("phone", "1-800-555-1234", "<PHONE>"),
    ("phone", "+1 (555) 123-4567", "<PHONE>"),
    ("phone", "+44 20 7946 0958.", "<PHONE>."),
    ("phone", "+44 (0)20 7946 0958", "<PHONE>"),
    ("phone", "+49 30 1234567", "<PHONE>"),
    ("phone", "+4930123456", "<PHONE>"),
    ("phone", "Tel. 030 1234567", "Tel. <PHONE>"),
    ("phone", "020 7946 0958", "<PHONE>"),
    ("phone", "06 12 34 56 78", "<PHONE>"),
    ("phone", "030/1234567", "<PHONE>"),
    ("ip", "from 192.168.1.10 to", "from <IP_ADDRESS> to"),
    ("ip", "93.184.216.34:8080", "<IP_ADDRESS>:8080"),
    ("ip", "172.16.254.1", "<IP_ADDRESS>"),
    ("ip", "2001:4860:4860::8888", "<IP_ADDRESS>"),
    ("ip", "[fe80::1ff:fe23:4567:890a]:22", "[<IP_ADDRESS>]:22"),
    ("ip", "::ffff:93.184.216.34", "<IP_ADDRESS>"),
    ("credit_card", "4111 1111 1111 1111", "<CREDIT_CARD>"),
    ("credit_card", "card: 4111-1111-1111-1111.", "card: <CREDIT_CARD>."),
    ("credit_card", "4111111111111111", "<CREDIT_CARD>"),
    ("credit_card", "5500 0000 0000 0004", "<CREDIT_CARD>"),
    ("credit_card", "Amex 3782 822463 10005", "Amex <CREDIT_CARD>"),
    ("credit_card", "6011000000000004", "<CREDIT_CARD>"),
    ("credit_card", "2223000048400011", "<CREDIT_CARD>"),
    ("iban", "DE89 3704 0044 0532 0130 00", "<IBAN>"),
    ("iban", "DE89370400440532013000", "<IBAN>"),
    ("iban", "GB82 WEST 1234 5698 7654 32", "<IBAN>"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606", "<IBAN>"),
    ("iban", "NL91ABNA0417164300", "<IBAN>"),
    ("iban", "CH93 0076 2011 6238 5295 7", "<IBAN>"),
    ("iban", "BE68 5390 0754 7034 CODE", "<IBAN> CODE"),  # a word that looks like a group stays
    ("secret", "AKIAIOSFODNN7EXAMPLE", "<SECRET>"),
    ("secret", "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8", "<SECRET>"),
    ("secret", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "<SECRET>"),
    ("secret", "key sk-proj-abc123DEF456ghi789JKL012mno here", "key <SECRET> here"),
    ("secret", "xoxb-123456789012-abcdefABCDEF", "<SECRET>"),
    ("secret", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "<SECRET>"),
    ("secret", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "<SECRET>"),
    ("secret", "api_key=9f8e7d6c5b4a39281716aBcDeF", "api_key=<SECRET>"),
    ("secret", 'token: "c2VjcmV0LXRva2VuLXZhbHVlLTEyMzQ1"', 'token: "<SECRET>"'),
    ("secret", "password = S3cr3t!Pass9", "password = <SECRET>"),
    ("secret", "DB_PASSWORD=hunter2x9", "DB_PASSWORD=<SECRET>"),
    ("secret", '{"client_secret": "AbCdEf0123456789XyZ"}', '{"client_secret": "<SECRET>"}'),
    ("secret", "Authorization: Bearer abcDEF123456ghiJKL789", "Authorization: Bearer <SECRET>"),
    (
        "secret",
        "key:\n-----BEGIN RSA PRIVATE KEY-----\n"
        "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
        "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----\nend",
        "key:\n<SECRET>\nend",
    ),
    (
        "secret",  # a block cut before its END line still goes, up to the first non-base64 line
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "The file was truncated.",
        "<SECRET>\nThe file was truncated.",
    ),
]

# (kind, text): look-alikes that must come out byte-for-byte
NEGATIVE = [
    ("email", "follow @username"),
    ("email", "user@localhost"),
    ("email", "name at example dot com"),
    ("email", "a @ b.com"),
    ("email", "@property\ndef name(self):"),
    ("phone", "In 1999 we had 12345 users"),
    ("phone", "from 2019-2020 to 2021"),
    ("phone", "meet at 10:30 or 09:00-17:00"),
    ("phone", "on 2023-01-15, 15.01.2023 or 01/15/2023"),
    ("phone", "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2"),
    ("phone", "Python 3.11.2, 1,234,567 people, pi is 3.14159265358979"),
    ("phone", "+3 points, x = +12345678, Decimal('+35236450.6')"),
    ("phone", "Boston, MA 02110-1301, USA"),  # ZIP+4 of every GPL licence
    ("phone", "values in octal: 041 117 132"),
    ("phone", "<Buffer 00 00 00 00 00> <Buffer 01 02 03 04 05> 66 00 68 00 71 00 77 00"),
    ("phone", "snapshot 1:10~+20191229111838+6991d5728f1-1"),
    ("phone", "https://www.ntt.co.jp/news/news01e/0104/010417.html"),
    ("ip", "localhost 127.0.0.1, any 0.0.0.0, ::1 and ::"),
    ("ip", "docs use 192.0.2.1, 198.51.100.7, 203.0.113.9 and 2001:db8::1"),
    ("ip", "netmask 255.255.255.0, multicast 224.0.0.251"),
    ("ip", "bad 256.1.1.1, 1.2.3.4.5, 10.20.30"),
    ("ip", "v1.2.3.4 and version 1.2.3.4"),  # 1.2.3.4: a version (first part <= 20, all < 100)
    ("ip", "update to 2.7.2.2 or 3.14.5.9 or 1.2.99.2"),
    ("ip", "time 12:30:45, std::vector, F1::F2, B<int>::c"),
    ("ip", "MAC 00:1a:2b:3c:4d:5e, list 2:4:6:8:10:12:14:16"),
    ("credit_card", "4111 1111 1111 1112 and 4111111111111112"),  # Luhn fails
    ("credit_card", "a timestamp 1700000000000 and 1234567890123452"),  # issuer digit 1
    ("credit_card", "ISBN 9783161484100"),
    ("credit_card", "https://oss-fuzz.com/testcase-detail/5390364397928448"),  # Luhn-valid id in a URL
    ("credit_card", "row 1111 4111 1111 1111 1111 1111"),  # a table of numbers
    ("credit_card", "uuid 12345678-1234-1234-1234-123456789012"),
    ("iban", "DE89 3704 0044 0532 0130 01"),  # mod-97 fails
    ("iban", "GB82 WEST 1234 5698 7654 33 and GB82WEST12345698765433"),
    ("iban", "DE12 3456 7890 is too short, ISO 13616, AB12CDEFGHIJKLMNOP"),
    ("secret", "commit e83c5163316f89bfbde7d9ab23ca2e25604af290"),
    ("secret", "uuid 123e4567-e89b-12d3-a456-426614174000"),
    ("secret", "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ("secret", "pip install scikit-learn (sk-learn), sk-some-long-hyphenated-words-here"),
    ("secret", "token: the next one; password: required; passwd: Permission denied"),
    ("secret", "password=hunter2 is too short to tell"),
    ("secret", "PASSWORD: ${DB_PASSWORD}, api_key=<your-api-key>, api_key=YOUR_API_KEY_HERE"),
    ("secret", "c->password = gnome_keyring_strdup2(value); secret = compute_secret_2(x)"),
    ("secret", "const aliceSecret = alice.computeSecret(bob.getPublicKey())"),
    ("secret", "token_count: 12345678901234567890"),
    (
        "secret",
        "-----BEGIN CERTIFICATE-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnz\n"
        "-----END CERTIFICATE-----",
    ),
]


@pytest.mark.parametrize(
    ("kind", "text", "expected"), POSITIVE, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(POSITIVE)]
)
def test_replaced(kind: str, text: str, expected: str) -> None:
    out, counts = scrub(text, [kind])
    assert out == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize(("kind", "text"), NEGATIVE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(NEGATIVE)])
def test_left_alone(kind: str, text: str) -> None:
    assert scrub(text, [kind]) == (text, {kind: 0})
    assert scrub(text)[0] == text  # and no other kind claims it either


def test_every_kind_has_cases() -> None:
    assert {k for k, *_ in POSITIVE} == {k for k, _ in NEGATIVE} == set(PII_KINDS) == set(PLACEHOLDERS)


def test_mixed_paragraph_replaces_each_item_and_keeps_every_other_byte() -> None:
    template = (
        "Dear Ms. Müller, thanks for your order #4521 of 3 March 2024 (version 2.7.1).\n"
        "Please reply to {email} or call {phone} before 17:30.  Your card {card}\n"
        "was declined, so pay by transfer to {iban}; our server {ip} logged the attempt,\n"
        "and the deploy key {key} has been rotated.\tSee commit 3f786850e387550fdab836ed7e6dc881de23001b."
    )
    items = {
        "email": ("anna.mueller@example.de", "<EMAIL>"),
        "phone": ("+49 89 1234 5678", "<PHONE>"),
        "card": ("5500 0000 0000 0004", "<CREDIT_CARD>"),
        "iban": ("DE89 3704 0044 0532 0130 00", "<IBAN>"),
        "ip": ("81.2.69.160", "<IP_ADDRESS>"),
        "key": ("AKIAIOSFODNN7EXAMPLE", "<SECRET>"),
    }
    text = template.format(**{name: value for name, (value, _) in items.items()})
    expected = template.format(**{name: placeholder for name, (_, placeholder) in items.items()})
    out, counts = scrub(text)
    assert out == expected
    assert counts == {"secret": 1, "email": 1, "iban": 1, "credit_card": 1, "ip": 1, "phone": 1}
    assert scrub(out) == (out, dict.fromkeys(PII_KINDS, 0))  # placeholders are never PII themselves


def test_counts_add_up_per_kind_and_only_requested_kinds_run() -> None:
    text = "a@example.com, b@example.org, 192.168.0.7 and c@example.net"
    assert scrub(text) == (
        "<EMAIL>, <EMAIL>, <IP_ADDRESS> and <EMAIL>",
        {"secret": 0, "email": 3, "iban": 0, "credit_card": 0, "ip": 1, "phone": 0},
    )
    assert scrub(text, ["ip"]) == ("a@example.com, b@example.org, <IP_ADDRESS> and c@example.net", {"ip": 1})
    assert scrub(text, "email")[1] == {"email": 3}
    assert scrub(text, []) == (text, {})


def test_unknown_kind_is_a_user_error_listing_the_kinds() -> None:
    with pytest.raises(UserError, match=r"unknown PII kind\(s\) 'ssn'; known: secret, email, iban"):
        scrub("text", ["email", "ssn"])


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert luhn_valid("378282246310005") and luhn_valid("6011000000000004")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("gb82west12345698765432")
    assert (
        not iban_valid("DE89370400440532013001")
        and not iban_valid("DE89")
        and not iban_valid("1234567890123456")
    )
