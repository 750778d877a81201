"""One SPEKE v2.0 exchange with licensegate's key service, as a packager makes it, through the
`cpix` library (DASH-IF CPIX documents, from PyPI): the request is built with it, the answer
checked against its CPIX schema and read back with it.

Usage: exchange.py URL TOKEN CONTENT_ID KID[,KID...] SCHEME SYSTEM[,SYSTEM...] [RECIPIENT_DIR]

With RECIPIENT_DIR, the request names a recipient certificate (RSA-2048, made there with Debian's
openssl): the answer's keys must come encrypted to it, and are decrypted and checked here as CPIX
defines (RSA-OAEP document and MAC keys, AES-256-CBC with the IV first, HMAC-SHA512).
Prints JSON: {"keys": {kid: hex}, "systems": [{"kid", "system", "pssh", "content_protection_data",
"hls_media", "hls_master"}]} with the signaling base64-decoded where it is text.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import cpix
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from lxml import etree

SYSTEMS = {
    "widevine": cpix.WIDEVINE_SYSTEM_ID,
    "playready": cpix.PLAYREADY_SYSTEM_ID,
    "fairplay": uuid.UUID("94ce86fb-07ff-4f43-adb8-93d2fa968ca2"),
    # W3C's common system: ClearKey CDMs read the key IDs from its pssh.
    "clearkey": uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"),
}
CPIX_NS = "urn:dashif:org:cpix"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def recipient(directory):
    """A packager's RSA-2048 key and self-signed certificate (base64 DER)."""
    key, certificate = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.der")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-outform", "DER",
         "-out", certificate, "-subj", "/CN=packager", "-days", "1"],
        check=True, capture_output=True,
    )
    return RSA.import_key(open(key, "rb").read()), base64.b64encode(open(certificate, "rb").read()).decode()


def request_document(content_id, kids, scheme, systems, certificate=None):
    document = cpix.CPIX(
        content_id=content_id,
        version="2.3",
        content_keys=cpix.ContentKeyList(
            *[cpix.ContentKey(kid=kid, common_encryption_scheme=scheme) for kid in kids]
        ),
        drm_systems=cpix.DRMSystemList(
            *[cpix.DRMSystem(kid=kid, system_id=SYSTEMS[name]) for kid in kids for name in systems]
        ),
        periods=cpix.PeriodList(cpix.Period(id="keyPeriod_1", index=1)),
        usage_rules=cpix.UsageRuleList(
            *[
                cpix.UsageRule(
                    kid=kid,
                    # No KeyPeriodFilter: the library's schema types its periodId as xs:ID, which the
                    # ContentKeyPeriod's own id already takes.
                    filters=[cpix.VideoFilter(max_pixels=442368)],
                    intended_track_type="SD",
                )
                for kid in kids
            ]
        ),
    )
    if certificate:
        document.delivery_datas = cpix.DeliveryDataList(
            cpix.DeliveryData(cpix.DeliveryKey(certificate), cpix.DocumentKey(base64.b64encode(b"-").decode()))
        )
    # Read back so that every element carries its namespace (the library builds some without).
    root = etree.fromstring(etree.tostring(document.element()))
    # A request names the recipient only; the document key is the answer's to make.
    for delivery in root.iter("{%s}DeliveryData" % CPIX_NS):
        for child in list(delivery):
            if etree.QName(child).localname != "DeliveryKey":
                delivery.remove(child)
    # What the encryptor asks for: each system's signaling elements, sent empty.
    for system in root.iter("{%s}DRMSystem" % CPIX_NS):
        name = next(n for n, i in SYSTEMS.items() if str(i) == system.get("systemId").lower())
        wanted = [] if name == "fairplay" else ["PSSH", "ContentProtectionData"]
        for tag in wanted:
            etree.SubElement(system, "{%s}%s" % (CPIX_NS, tag))
        for playlist in ("media", "master"):
            etree.SubElement(system, "{%s}HLSSignalingData" % CPIX_NS, playlist=playlist)
        if name == "playready":
            etree.SubElement(system, "{%s}SmoothStreamingProtectionHeaderData" % CPIX_NS)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def main():
    url, token, content_id, kids, scheme, systems = sys.argv[1:7]
    kids = [uuid.UUID(kid) for kid in kids.split(",")]
    systems = systems.split(",")
    private_key, certificate = recipient(sys.argv[7]) if len(sys.argv) > 7 else (None, None)
    body = request_document(content_id, kids, scheme, systems, certificate)
    # A request naming a recipient is left out: the schema wants the DocumentKey the answer adds.
    if certificate is None:
        valid, error = cpix.validate(without_scheme(body))
        if not valid:
            fail(f"the request itself is not valid CPIX: {error}")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/xml",
            "X-Speke-Version": "2.0",
            "Authorization": f"Bearer {token}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read()
            headers = response.headers
    except urllib.error.HTTPError as e:
        fail(f"{e.code}: {e.read().decode(errors='replace')}")
    if headers.get("X-Speke-Version") != "2.0":
        fail(f"X-Speke-Version answered {headers.get('X-Speke-Version')!r}")
    if not headers.get("X-Speke-User-Agent"):
        fail("no X-Speke-User-Agent")
    root = etree.fromstring(answer)
    for key in root.iter("{%s}ContentKey" % CPIX_NS):
        if key.get("commonEncryptionScheme") != scheme:
            fail(f"commonEncryptionScheme changed to {key.get('commonEncryptionScheme')!r}")
    valid, error = cpix.validate(without_scheme(answer))
    if not valid:
        fail(f"the answer is not valid CPIX: {error}")
    parsed = cpix.parse(answer)
    valid, errors = parsed.validate_content()
    if not valid:
        fail(f"the answer's references do not hold: {errors}")
    if parsed.content_id != content_id or parsed.version != "2.3":
        fail("contentId or version changed")
    if len(parsed.usage_rules) != len(kids) or len(parsed.periods) != 1:
        fail("usage rules or key periods not answered unchanged")
    keys = {}
    document_key = mac_key = None
    if private_key is not None:
        delivery = root.find(".//{%s}DeliveryData" % CPIX_NS)
        if delivery is None:
            fail("no DeliveryData in the answer")
        values = delivery.findall(".//{%s}CipherValue" % cpix.ENC)
        oaep = PKCS1_OAEP.new(private_key)
        document_key = oaep.decrypt(base64.b64decode(values[0].text))
        mac_key = oaep.decrypt(base64.b64decode(values[1].text))
        if len(document_key) != 32:
            fail(f"a {len(document_key)}-byte document key")
    for key in parsed.content_keys:
        if document_key is not None:
            if key.value_mac is None:
                fail(f"the key for {key.kid} is not encrypted")
            value = base64.b64decode(key.cek)
            mac = hmac.new(mac_key, value, hashlib.sha512).digest()
            if not hmac.compare_digest(mac, base64.b64decode(key.value_mac)):
                fail(f"the MAC of the key for {key.kid} does not hold")
            padded = AES.new(document_key, AES.MODE_CBC, value[:16]).decrypt(value[16:])
            value = padded[: -padded[-1]]
        else:
            if key.value_mac is not None:
                fail("a key came encrypted unasked")
            value = base64.b64decode(key.cek)
        if len(value) != 16:
            fail(f"key for {key.kid} is {len(value)} bytes")
        keys[str(key.kid)] = value.hex()
    if sorted(keys) != sorted(str(kid) for kid in kids):
        fail(f"keys for {sorted(keys)}, asked for {kids}")
    answered = []
    for system in parsed.drm_systems:
        text = lambda value: base64.b64decode(value).decode() if value else None
        answered.append({
            "kid": str(system.kid),
            "system": next(n for n, i in SYSTEMS.items() if i == system.system_id),
            "pssh": system.pssh,
            "content_protection_data": text(system.content_protection_data),
            "hls_media": text(system.hls_signaling_data),
            "hls_master": text(system.hls_signaling_data_master),
        })
    print(json.dumps({"keys": keys, "systems": answered}))


def without_scheme(document):
    """The library's bundled schema predates CPIX 2.3, which added ContentKey@commonEncryptionScheme
    (SPEKE v2.0 requires it): the attribute is checked above and left out for the schema check."""
    root = etree.fromstring(document)
    for key in root.iter("{%s}ContentKey" % CPIX_NS):
        key.attrib.pop("commonEncryptionScheme", None)
    return etree.tostring(root)


if __name__ == "__main__":
    main()
