"""RFC 3261 section 25 grammar pieces used by the parsers, as regexes.

Each pattern quotes the ABNF it implements. Patterns work on ``str``
decoded as latin-1, so every byte maps to one character and positions and
round trips are exact.
"""

import re

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = "A-Za-z0-9\\-.!%*_+`'~"
TOKEN = f"[{TOKEN_CHARS}]+"
TOKEN_RE = re.compile(TOKEN)
TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")
_TOKEN_DELETE = bytes(TOKEN_BYTES)

# LWS = [*WSP CRLF] 1*WSP ; values are unfolded before parsing, so plain WSP
WS = "[ \t]*"

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# (written as an unrolled loop, "normal* (special normal*)*": the same language,
# without a per-character alternation that Python's regex engine runs slowly)
_QDTEXT = '[^"\\\\\\r\\n]'
_QPAIR = '\\\\[\\x00-\\x09\\x0b\\x0c\\x0e-\\x7f]'
QUOTED = f'"{_QDTEXT}*(?:{_QPAIR}{_QDTEXT}*)*"'

# escaped = "%" HEXDIG HEXDIG
ESCAPED = "%[0-9A-Fa-f]{2}"
# unreserved = alphanum / mark ; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
UNRESERVED = "A-Za-z0-9\\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
USER = f"(?=[{UNRESERVED}&=+$,;?/%])[{UNRESERVED}&=+$,;?/]*(?:{ESCAPED}[{UNRESERVED}&=+$,;?/]*)*"
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD = f"[{UNRESERVED}&=+$,]*(?:{ESCAPED}[{UNRESERVED}&=+$,]*)*"
# hostname = *( domainlabel "." ) toplabel [ "." ]  (underscore tolerated, as
# deployed hosts use it)
# (a label: alphanumeric runs joined by hyphens, never at either end)
_LABEL = "[A-Za-z0-9_]+(?:-+[A-Za-z0-9_]+)*"
HOSTNAME = f"(?:{_LABEL}\\.)*{_LABEL}\\.?"
IPV4 = "\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}"
IPV6REF = "\\[[0-9A-Fa-f:.]+\\]"
HOST = f"(?:{IPV6REF}|{HOSTNAME})"
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
_PARAM_SET = f"{UNRESERVED}\\[\\]/:&+$"
PARAMCHARS = f"[{_PARAM_SET}]*(?:{ESCAPED}[{_PARAM_SET}]*)*"          # *paramchar
PARAMCHARS1 = f"(?=[{_PARAM_SET}%]){PARAMCHARS}"                       # 1*paramchar
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNV_SET = f"{UNRESERVED}\\[\\]/?:+$"
HNVCHARS = f"[{_HNV_SET}]*(?:{ESCAPED}[{_HNV_SET}]*)*"                  # *hnvchar
HNVCHARS1 = f"(?=[{_HNV_SET}%]){HNVCHARS}"                             # 1*hnvchar

# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
SIP_URI_RE = re.compile(
    f"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    f"(?:(?P<user>{USER})(?::(?P<password>{PASSWORD}))?@)?"
    f"(?P<host>{HOST})(?::(?P<port>\\d{{1,5}}))?"
    f"(?P<params>(?:;{PARAMCHARS1}(?:={PARAMCHARS})?)*)"
    f"(?:\\?(?P<headers>{HNVCHARS}=?{HNVCHARS}(?:&{HNVCHARS1}={HNVCHARS})*))?"
)
# absoluteURI = scheme ":" ( hier-part / opaque-part ), loosely: no white space
SCHEME_RE = re.compile("([A-Za-z][A-Za-z0-9+\\-.]*):")
ABSOLUTE_URI_RE = re.compile("[A-Za-z][A-Za-z0-9+\\-.]*:[^\\s<>\"]+")

# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string
# via-received = "received" EQUAL (IPv4address / IPv6address): an IPv6
# address without brackets (RFC 5118 4.5), tried before token, which would
# take its first group alone
IPV6ADDRESS = "[0-9A-Fa-f.]*:[0-9A-Fa-f:.]+"
PARAM_RE = re.compile(
    f"{WS};{WS}({TOKEN})(?:{WS}={WS}({IPV6ADDRESS}|{TOKEN}|{IPV6REF}|{QUOTED}))?"
)
QUOTED_RE = re.compile(QUOTED)
# The common case of a parameter list: tokens only, no white space.
PLAIN_PARAMS_RE = re.compile(f"(?:;{TOKEN}(?:={TOKEN})?)*")

# Via: sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
VIA_RE = re.compile(
    f"{WS}({TOKEN}){WS}/{WS}({TOKEN}){WS}/{WS}({TOKEN})[ \\t]+"
    f"({HOST})(?:{WS}:{WS}(\\d{{1,5}}))?"
)

# rfc1123-date = wkday "," SP date1 SP time SP "GMT"
DATE_RE = re.compile(
    "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d{2} "
    "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \\d{4} "
    "\\d{2}:\\d{2}:\\d{2} GMT"
)


def is_digits(text: str) -> bool:
    """One or more ASCII digits. ``str.isdigit`` alone also takes ``"\u00b2"``
    (superscript two, in Latin-1), which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def is_token(value: bytes) -> bool:
    """True when every byte of a non-empty ``value`` is a token character."""
    return bool(value) and not value.translate(None, _TOKEN_DELETE)
