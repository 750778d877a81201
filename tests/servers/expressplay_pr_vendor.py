#!/usr/bin/env python3
"""Test double of ExpressPlay's PlayReady token service and license server.

Usage: python3 expressplay_pr_vendor.py PORT AUTHENTICATOR

Written only from ExpressPlay's public documentation of /hms/pr/token, so that a
client's token requests can be checked against the documented rules.  It issues
opaque tokens and redeems them for a stand-in "license"; no real DRM happens.
"""
import json
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
AUTHENTICATOR = sys.argv[2]
LICENSE_URL = f"http://127.0.0.1:{PORT}/playready/rightsmanager.asmx"
DEFAULT_TOKEN_LIFETIME = 30 * 24 * 3600  # documented default: 30 days

HEX16 = re.compile(r"^[0-9a-fA-F]{32}$")            # 16-byte key / kid
HEX4 = re.compile(r"^[0-9a-fA-F]{8}$")              # 4-byte generalFlags
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
RELATIVE = re.compile(r"^\+\d+$")                   # "+N" seconds from issue
OPL_NAMES = ("analogVideoOPL", "compressedDigitalAudioOPL", "compressedDigitalVideoOPL",
             "uncompressedDigitalAudioOPL", "uncompressedDigitalVideoOPL")

# Shared state; ThreadingHTTPServer handles requests concurrently, hence the lock.
LOCK = threading.Lock()
TOKENS = {}  # token -> {"kids": [...], "expires": epoch seconds, "rights": {...}}
STATS = {"token_requests": 0, "tokens_issued": 0, "licenses": 0, "last_rights": {}}


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad(code, message):
    return ApiError(400, code, message)


def parse_time(value, now):
    """Return epoch seconds for '+N' or an RFC 3339 Z time, or None if malformed."""
    if RELATIVE.match(value):
        return now + int(value[1:])
    if RFC3339_Z.match(value):
        try:
            dt = datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
        except ValueError:  # regex passed but e.g. month 13
            return None
        return dt.replace(tzinfo=timezone.utc).timestamp()
    return None


def validate_token_request(p, now):
    """Apply the documented rules in order; raise ApiError on the first violation.
    `p` maps name -> list of values (kid/contentKey may repeat for multi-key)."""
    one = lambda name: p[name][0] if name in p else None

    # Authentication comes first: nothing else is checked for unauthenticated callers.
    auth = one("customerAuthenticator")
    if auth is None:
        raise ApiError(401, -2017, "Authentication token must be supplied")
    if auth != AUTHENTICATOR:
        raise ApiError(401, -2018, "Authentication token invalid")

    kids = p.get("kid")
    if not kids:
        raise bad(-4018, "Missing kid")
    for kid in kids:
        if kid.startswith("^"):
            if not 1 <= len(kid) - 1 <= 64:
                raise bad(-4021, "kid string after '^' must be 1 to 64 characters long")
        elif not HEX16.match(kid):
            raise bad(-4020, "kid must be 32 hexadecimal characters long")

    # Key material: either contentKey(s) or a wrapped key (kek + ek), never both.
    keys, kek, ek = p.get("contentKey", []), one("kek"), one("ek")
    if keys and kek is not None:
        raise bad(-5007, "Only one of kek or contentKey may be specified")
    for key in keys:
        if not HEX16.match(key):
            raise bad(-2027, "Content encryption key must be 32-hexadecimal digits long")
    if not (kek is not None and ek is not None) and len(keys) < len(kids):
        raise bad(-4019, "Failed to get content key from key storage service")

    rights = one("rightsType")
    if rights is None:
        raise bad(-2020, "Missing rights type")
    if rights not in ("BuyToOwn", "Rental"):
        raise bad(-2021, "Invalid rights type")
    rental = rights == "Rental"

    # rental.* parameters are only meaningful (and only accepted) for Rental.
    end = one("rental.periodEndTime")
    if rental and (end is None or parse_time(end, now) is None):
        raise bad(-2022, "Missing rental period end time")
    if not rental and end is not None:
        raise bad(-2022, "rental.periodEndTime is only valid with Rental rights")
    dur = one("rental.playDuration")
    if dur is not None and (not rental or not dur.isdigit()):
        raise bad(-2025, "Invalid rental play duration")

    flags = one("generalFlags")
    if flags is not None and not HEX4.match(flags):
        raise bad(-5003, "Invalid general flags")
    persistent = flags is not None and int(flags, 16) & 0x1
    if rental and not persistent:  # PlayReady rentals must be persistent licenses
        raise bad(-5003, "Invalid general flags: Rental licenses must be persistent (00000001)")

    for name in OPL_NAMES:
        val = one(name)
        if val is None:
            raise bad(-5006, "Missing OPL value")
        if not val.isdigit() or int(val) > 999:  # isdigit() rejects signs and decimals
            raise bad(-2034, "Invalid Output Control, values out of specified range")

    uob = one("unknownOutputBehavior")
    if uob is not None and uob not in ("Allow", "Disallow", "SDOnly"):
        raise bad(-5001, "Invalid unknown output type error")

    exp = one("expirationTime")
    expires = now + DEFAULT_TOKEN_LIFETIME
    if exp is not None:
        expires = parse_time(exp, now)
        if expires is None or expires <= now:
            raise bad(-2002, "Invalid token expiration time")

    cookie = one("cookie")
    if cookie is not None and len(cookie) > 32:
        raise bad(-2033, "Invalid cookie")
    return kids, expires


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length

    def log_message(self, *args):  # keep stdout/stderr quiet for test harnesses
        pass

    def send(self, status, ctype, body):
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        # Always drain the body, so a kept-alive connection stays in sync.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        url = urlsplit(self.path)
        body = self.read_body()
        if url.path == "/hms/pr/token":
            self.token(method, url.query, body)
        elif url.path == "/playready/rightsmanager.asmx" and method == "POST":
            self.license(url.query, body)
        elif url.path == "/stats" and method == "GET":
            with LOCK:
                self.send(200, "application/json", json.dumps(STATS))
        else:
            self.send(404, "text/plain", "not found")

    def token(self, method, query, body):
        # parse_qs drops blank values, so "kid=" counts as missing.
        params = parse_qs(query)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if method == "POST" and ctype == "application/x-www-form-urlencoded":
            for k, v in parse_qs(body.decode("utf-8", "replace")).items():
                params.setdefault(k, []).extend(v)
        with LOCK:
            STATS["token_requests"] += 1

        # errorFormat decides how every other error is rendered, so check it first.
        fmt = params.get("errorFormat", ["html"])[0]
        try:
            if fmt not in ("html", "json"):
                fmt = "html"
                raise bad(-3004, "Invalid error format specified")
            now = time.time()
            kids, expires = validate_token_request(params, now)
        except ApiError as e:
            if fmt == "json":
                self.send(e.status, "application/json",
                          json.dumps({"errorCode": e.code, "errorMessage": e.message}))
            else:
                self.send(e.status, "text/html",
                          f"<html><body><h1>Error {e.code}</h1>"
                          f"<p>{esc(e.message)}</p></body></html>")
            return

        # Record the validated rights, minus secrets, for /stats inspection.
        rights = {k: (v[0] if len(v) == 1 else v) for k, v in params.items()
                  if k not in ("customerAuthenticator", "contentKey")}
        token = secrets.token_urlsafe(48)  # opaque, base64url
        with LOCK:
            TOKENS[token] = {"kids": kids, "expires": expires, "rights": rights}
            STATS["tokens_issued"] += 1
            STATS["last_rights"] = rights
        self.send(200, "application/json",
                  json.dumps({"licenseAcquisitionUrl": LICENSE_URL, "token": token}))

    def license(self, query, body):
        token = parse_qs(query).get("ExpressPlayToken", [None])[0]
        with LOCK:
            entry = TOKENS.get(token) if token else None
        if entry is None or entry["expires"] <= time.time():
            self.send(401, "text/plain", "invalid token")
            return
        if not body:
            self.send(400, "text/plain", "missing license challenge body")
            return
        if "AcquireLicense" not in self.headers.get("SOAPAction", ""):
            self.send(400, "text/plain", "SOAPAction header must name AcquireLicense")
            return
        with LOCK:
            STATS["licenses"] += 1
        self.send(200, "text/xml; charset=utf-8", b"<AcquireLicenseResponse token-ok/>")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    print("listening", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
