"""A real PlayReady CDM implementation (pyplayready, from PyPI, never vendored) asking for licenses
through licensegate, on a device this script makes itself.

pyplayready encrypts a challenge's client data to Microsoft's license server key, which it keeps
in the Cdm; this test replaces it with a key of its own whose private half the simulator's
license server holds. Its device has a certificate chain of this test's own (a root, an issuer
and the device), built with pyplayready's certificate structures: nothing in the CDM checks the
chain against Microsoft's root.

  playready_cdm.py server-key FILE   writes a server key pair; prints the private key (hex)
  playready_cdm.py run ...           runs every scenario; prints one line per scenario, exits
                                     1 on the first failure
"""

import base64
import json
import os
import time
import uuid

import requests
from construct import Container, ListContainer
from ecpy.curves import Curve, Point
from pyplayready.cdm import Cdm
from pyplayready.crypto import Crypto
from pyplayready.crypto.ecc_key import ECCKey
from pyplayready.system.bcert import (
    BCertCertType,
    BCertFlag,
    BCertKeyType,
    BCertKeyUsage,
    BCertObjFlag,
    BCertObjType,
    BCertSignatureType,
    Certificate,
    CertificateChain,
    _BCertStructs,
)
from pyplayready.system.wrmheader import WRMHeader

from conformance import check, check_decrypts, command_line, expect

SOAP_ACTION = '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"'
SECURITY_LEVEL = 2000


def new_key():
    """A key pair whose coordinates need all 32 bytes: pyplayready writes numbers without their
    leading zero bytes."""
    while True:
        key = ECCKey.generate()
        if len(key.public_bytes()) == 64 and len(key.private_bytes()) == 32:
            return key


def attribute(tag, structure, value):
    return Container(flags=BCertObjFlag.MUST_UNDERSTAND, tag=tag,
                     length=len(structure.build(value)) + 8, attribute=value)


def padded(name):
    return name + b"\x00" * (-len(name) % 4)


def issuer_certificate(issuer_key, root_key):
    """The device maker's certificate: its key, which signs devices, signed by the root."""
    structs = _BCertStructs
    public = issuer_key.public_bytes()
    basic = Container(cert_id=os.urandom(16), security_level=SECURITY_LEVEL, flags=BCertFlag.EMPTY,
                      cert_type=BCertCertType.ISSUER,
                      public_key_digest=issuer_key.public_sha256_digest(),
                      expiration_date=0xFFFFFFFF, client_id=os.urandom(16))
    keys = Container(key_count=1, cert_keys=ListContainer([Container(
        type=BCertKeyType.ECC256, length=len(public) * 8, flags=BCertFlag.EMPTY, key=public,
        usages_count=1, usages=ListContainer([BCertKeyUsage.ISSUER_DEVICE]))]))
    names = [b"licensegate", b"conformance", b"1"]
    maker = Container(flags=0,
                      manufacturer_name_length=len(names[0]), manufacturer_name=padded(names[0]),
                      model_name_length=len(names[1]), model_name=padded(names[1]),
                      model_number_length=len(names[2]), model_number=padded(names[2]))
    certificate = Container(signature=b"CERT", version=1, total_length=0, certificate_length=0,
                            attributes=ListContainer([
                                attribute(BCertObjType.BASIC, structs.BasicInfo, basic),
                                attribute(BCertObjType.KEY, structs.KeyInfo, keys),
                                attribute(BCertObjType.MANUFACTURER, structs.ManufacturerInfo,
                                          maker)]))
    unsigned = structs.BCert.build(certificate)
    certificate.certificate_length = len(unsigned)
    certificate.total_length = len(unsigned) + 144
    signature = Crypto.ecc256_sign(root_key, structs.BCert.build(certificate))
    root_public = root_key.public_bytes()
    certificate.attributes.append(attribute(BCertObjType.SIGNATURE, structs.SignatureInfo, Container(
        signature_type=BCertSignatureType.P256, signature_size=len(signature), signature=signature,
        signature_key_size=len(root_public) * 8, signature_key=root_public)))
    return Certificate(certificate)


def device(server_public):
    """A CDM on a new device, encrypting to this test's license server."""
    root_key, issuer_key = new_key(), new_key()
    encryption_key, signing_key = new_key(), new_key()
    chain = CertificateChain(Container(signature=b"CHAI", version=1, total_length=20, flags=0,
                                       certificate_count=0, certificates=ListContainer()))
    chain.append(issuer_certificate(issuer_key, root_key))
    chain.prepend(Certificate.new_leaf_cert(
        cert_id=os.urandom(16), security_level=SECURITY_LEVEL, client_id=os.urandom(16),
        signing_key=signing_key, encryption_key=encryption_key, group_key=issuer_key,
        parent=chain))
    cdm = Cdm(security_level=SECURITY_LEVEL, certificate_chain=CertificateChain.loads(chain.dumps()),
              encryption_key=encryption_key, signing_key=signing_key)
    curve = Curve.get_curve("secp256r1")
    cdm._wmrm_key = Point(int.from_bytes(server_public[:32], "big"),
                          int.from_bytes(server_public[32:], "big"), curve)
    return cdm


def wrm_header(key_ids):
    kids = "".join(
        f'<KID ALGID="AESCTR" VALUE="{base64.b64encode(uuid.UUID(kid).bytes_le).decode()}"></KID>'
        for kid in key_ids)
    xml = ('<WRMHEADER xmlns="http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader" '
           f'version="4.3.0.0"><DATA><PROTECTINFO><KIDS>{kids}</KIDS></PROTECTINFO>'
           '</DATA></WRMHEADER>')
    return WRMHeader(xml.encode("utf-16-le"))


def scenarios(args):
    tokens = json.loads(args.tokens)
    content = json.loads(args.content)
    with open(args.server_public, "rb") as public:
        server_public = public.read()

    def license(user, content_id, session=None, named=None, cdm=None):
        """A license for `content_id`'s keys from a CDM; `named`: the content the URL names."""
        cdm = cdm or device(server_public)
        cdm_session = cdm.open()
        challenge = cdm.get_license_challenge(cdm_session, wrm_header(content[content_id]["kids"]))
        url = f"{args.gate}/v1/license/playready"
        if named:
            url += f"?content={named}"
        headers = {"Authorization": f"Bearer {tokens[user]}", "SOAPAction": SOAP_ACTION,
                   "Content-Type": "text/xml; charset=utf-8"}
        if session:
            headers["X-Playback-Session"] = session
        answer = requests.post(url, data=challenge.encode("utf-8"), headers=headers, timeout=30)
        keys = None
        if answer.status_code == 200:
            cdm.parse_license(cdm_session, answer.text)
            keys = {str(key.key_id): key.key.hex() for key in cdm.get_keys(cdm_session)}
            for kid, key in content[content_id]["keys"].items():
                check(keys.get(kid) == key, f"{content_id}: key of {kid} is {keys.get(kid)}")
        return answer, keys, cdm

    def active_streams(user):
        answer = requests.get(f"{args.admin}/v1/users/{user}/streams",
                              headers={"Authorization": f"Bearer {args.admin_token}"}, timeout=30)
        return answer.json()["active"]

    answer, keys, ann = license("ann", "demo")
    expect(answer, "ok")
    session = answer.headers["X-Playback-Session"]
    key = content["demo"]["keys"][content["demo"]["kids"][0]]
    check_decrypts(args.media, key)
    yield "new license: the XMR key decrypts the demo stream, and a wrong key does not"

    expect(license("ann", "other", session=session, named="other")[0], "content_mismatch")
    bob, _, _ = license("bob", "demo", session=session)
    expect(bob, "ok")
    check(bob.headers["X-Playback-Session"] != session, "bob's license is a stream of his own")
    check(active_streams("bob") == 1 and active_streams("ann") == 1, "one stream each")
    yield "cross-user and cross-content continuations refused"

    # The stream's cadence: half the renewal interval.
    time.sleep(args.interval / 2)
    again, _, _ = license("ann", "demo", session=session, cdm=ann)
    expect(again, "ok")
    check(again.headers["X-Playback-Session"] == session, "the same stream continues")
    check(active_streams("ann") == 1, "still one stream")
    yield "the stream's license asked again at its cadence continues it"

    _, keys, _ = license("cleo", "multi")
    check(len(keys) == 2, f"two keys, got {keys}")
    yield "multi-key content: an XMR license for each key"

    for _ in range(2):
        expect(license("dora", "demo")[0], "ok")
    expect(license("dora", "demo")[0], "stream_limit_reached")
    check(active_streams("dora") == 2, "two streams play")
    yield "stream limit of 2 across real sessions"


def server_key(path):
    key = new_key()
    with open(path, "wb") as public:
        public.write(key.public_bytes())
    print(key.private_bytes().hex())


if __name__ == "__main__":
    command_line("server-key", "file", server_key, ["--server-public", ("--interval", float)],
                 {"run": scenarios})
