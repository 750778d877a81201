"""A real Widevine CDM implementation (pywidevine, from PyPI, never vendored) asking for licenses
through licensegate, on devices this script makes itself.

pywidevine builds and signs new license requests and reads licenses as a CDM does; it checks a
service certificate against Google's root, which this test replaces with a root of its own
(and signs its own service certificate with it). pywidevine 1.9.0 builds no renewal or
release: this script builds them as a CDM does, from the license's identification, signed with
the client MAC key derived from the session key and the exact request.

  widevine_cdm.py service DIR   writes root and service keys and the service certificate
  widevine_cdm.py run ...       runs every scenario; prints one line per scenario, exits 1 on
                                the first failure
  widevine_cdm.py packaged ...  the same for content a packager encrypted with keys from
                                licensegate's key service: each content's `pssh` is the one
                                licensegate gave the packager, and `--media` its packaged stream
"""

import json
import os
import time
import uuid

import requests
from Crypto.Cipher import PKCS1_OAEP
from Crypto.Hash import HMAC, SHA1, SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from Crypto.Util.asn1 import DerSequence
from pywidevine.cdm import Cdm
from pywidevine.license_protocol_pb2 import (
    ClientIdentification,
    DrmCertificate,
    License,
    LicenseRequest,
    LicenseType,
    ProtocolVersion,
    SignedDrmCertificate,
    SignedMessage,
)
from pywidevine.pssh import PSSH

from conformance import check, check_decrypts, command_line, expect

SYSTEM_ID = 4445


def pkcs1(key):
    """An RSA public key as a DrmCertificate holds it: PKCS#1 RSAPublicKey, DER."""
    return DerSequence([key.n, key.e]).encode()


def service(directory):
    root = RSA.generate(2048)
    service_key = RSA.generate(2048)
    certificate = DrmCertificate(
        type=DrmCertificate.Type.Value("SERVICE"),
        serial_number=os.urandom(16),
        creation_time_seconds=int(time.time()),
        public_key=pkcs1(service_key.publickey()),
        provider_id="licensegate-conformance",
    ).SerializeToString()
    signed = SignedDrmCertificate(
        drm_certificate=certificate,
        signature=pss.new(root).sign(SHA1.new(certificate)),
    )
    message = SignedMessage(
        type=SignedMessage.MessageType.Value("SERVICE_CERTIFICATE"),
        msg=signed.SerializeToString(),
    )
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "service-certificate.bin"), "wb") as out:
        out.write(message.SerializeToString())
    with open(os.path.join(directory, "service.pem"), "wb") as out:
        out.write(service_key.export_key(format="PEM", pkcs=8))
    with open(os.path.join(directory, "root.der"), "wb") as out:
        out.write(pkcs1(root.publickey()))


class Device:
    """A device of this test's own: an RSA key and a client identification carrying its
    certificate, and pywidevine's CDM on it."""

    def __init__(self, root_public_key):
        self.key = RSA.generate(2048)
        certificate = DrmCertificate(
            type=DrmCertificate.Type.Value("DEVICE"),
            serial_number=os.urandom(16),
            creation_time_seconds=int(time.time()),
            public_key=pkcs1(self.key.publickey()),
            system_id=SYSTEM_ID,
        ).SerializeToString()
        client_id = ClientIdentification(
            type=ClientIdentification.TokenType.Value("DRM_DEVICE_CERTIFICATE"),
            token=SignedDrmCertificate(drm_certificate=certificate).SerializeToString(),
            client_info=[
                ClientIdentification.NameValue(name="company_name", value="licensegate"),
                ClientIdentification.NameValue(name="model_name", value="conformance"),
            ],
        )
        self.cdm = Cdm("CHROME", SYSTEM_ID, 3, client_id, self.key)
        # pywidevine verifies service certificates against Google's root; this test's root
        # signed its service certificate.
        self.cdm.root_cert = DrmCertificate(public_key=root_public_key)


class Session:
    """One CDM session: its license request, the license, and what its renewals need."""

    def __init__(self, device, key_ids, license_type="STREAMING", service_certificate=None,
                 pssh=None):
        self.device = device
        self.id = device.cdm.open()
        if service_certificate is not None:
            device.cdm.set_service_certificate(self.id, service_certificate)
        if pssh is None:
            pssh = PSSH.new(system_id=PSSH.SystemId.Widevine,
                            key_ids=[uuid.UUID(k) for k in key_ids])
        else:
            pssh = PSSH(pssh)
        self.challenge = device.cdm.get_license_challenge(
            self.id, pssh, license_type, privacy_mode=service_certificate is not None)
        request = SignedMessage()
        request.ParseFromString(self.challenge)
        self.request_msg = request.msg
        self.license = None

    def take(self, answer):
        """Reads the license as the CDM does; keeps what renewals need."""
        signed = SignedMessage()
        signed.ParseFromString(answer)
        session_key = PKCS1_OAEP.new(self.device.key).decrypt(signed.session_key)
        _, self.server_mac, self.client_mac = Cdm.derive_keys(
            *Cdm.derive_context(self.request_msg), key=session_key)
        self.device.cdm.parse_license(self.id, answer)
        self.license = License()
        self.license.ParseFromString(signed.msg)
        return {str(key.kid): key.key.hex() for key in self.device.cdm.get_keys(self.id, "CONTENT")}

    def continuation(self, kind):
        """A renewal or release of the license, built and signed as a CDM does."""
        request = LicenseRequest(
            content_id=LicenseRequest.ContentIdentification(
                existing_license=LicenseRequest.ContentIdentification.ExistingLicense(
                    license_id=self.license.id,
                    seconds_since_started=5,
                    seconds_since_last_played=5,
                )
            ),
            type=LicenseRequest.RequestType.Value(kind),
            request_time=int(time.time()),
            protocol_version=ProtocolVersion.Value("VERSION_2_1"),
        ).SerializeToString()
        return SignedMessage(
            type=SignedMessage.MessageType.Value("LICENSE_REQUEST"),
            msg=request,
            signature=HMAC.new(self.client_mac, digestmod=SHA256).update(request).digest(),
        ).SerializeToString()

    def check_continued(self, answer, version):
        """The vendor's answer to a renewal or release: its license, signed for this session."""
        signed = SignedMessage()
        signed.ParseFromString(answer)
        expected = HMAC.new(self.server_mac, digestmod=SHA256).update(signed.msg).digest()
        check(signed.signature == expected, "the renewal license is signed for this session")
        renewed = License()
        renewed.ParseFromString(signed.msg)
        check(renewed.id.session_id == self.license.id.session_id, "same session")
        check(renewed.id.version == version, f"version {version}, got {renewed.id.version}")


class Gate:
    def __init__(self, args):
        self.url = args.gate
        self.admin = args.admin
        self.admin_token = args.admin_token
        self.tokens = json.loads(args.tokens)

    def license(self, user, body, content=None):
        url = f"{self.url}/v1/license/widevine"
        if content:
            url += f"?content={content}"
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return requests.post(url, data=body, headers=headers, timeout=30)

    def active_streams(self, user):
        answer = requests.get(f"{self.admin}/v1/users/{user}/streams",
                              headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)
        return answer.json()["active"]


def scenarios(args):
    gate = Gate(args)
    content = json.loads(args.content)
    with open(os.path.join(args.dir, "root.der"), "rb") as root:
        root_public_key = root.read()
    with open(os.path.join(args.dir, "service-certificate.bin"), "rb") as certificate:
        service_certificate = certificate.read()

    def new_session(user, content_id, **options):
        session = Session(Device(root_public_key), content[content_id]["kids"], **options)
        answer = expect(gate.license(user, session.challenge), "ok")
        keys = session.take(answer.content)
        for kid, key in content[content_id]["keys"].items():
            check(keys.get(kid) == key, f"{content_id}: key of {kid} is {keys.get(kid)}")
        return session

    def new_license():
        session = new_session("ann", "demo")
        key = content["demo"]["keys"][content["demo"]["kids"][0]]
        check_decrypts(args.media, key)
        return session

    ann = new_license()
    yield "new license: the demo stream decrypts with its key, and not with a wrong one"

    # The license's cadence: half the renewal delay the vendor's license asks for.
    time.sleep(ann.license.policy.renewal_delay_seconds / 2)
    ann.check_continued(expect(gate.license("ann", ann.continuation("RENEWAL")), "ok").content, 2)
    yield "renewal built from the license, signed with the client MAC key"

    renewal = ann.continuation("RENEWAL")
    expect(gate.license("bob", renewal), "stream_unknown")
    check(gate.active_streams("bob") == 0, "another user's renewal holds no stream")
    expect(gate.license("ann", renewal, content="other"), "content_mismatch")
    yield "cross-user and cross-content renewals refused"

    expect(gate.license("ann", ann.continuation("RELEASE")), "ok")
    check(gate.active_streams("ann") == 0, "the release ended the stream")
    yield "release ends the stream"

    offline = Session(Device(root_public_key), content["demo"]["kids"], license_type="OFFLINE")
    expect(gate.license("cleo", offline.challenge), "persistence_not_allowed")
    downloaded = new_session("cleo", "offline-demo", license_type="OFFLINE")
    check(downloaded.license.policy.can_persist, "the offline license may be stored")
    check(downloaded.license.id.type == LicenseType.Value("OFFLINE"), "an OFFLINE license")
    yield "OFFLINE refused under a streaming policy, issued under a persistent one"

    certificate = requests.post(f"{gate.url}/v1/license/widevine", data=b"\x08\x04", timeout=30)
    check(certificate.status_code == 200, f"service certificate: {certificate.status_code}")
    check(certificate.content == service_certificate, "the vendor's service certificate")
    private = new_session("dave", "demo", service_certificate=certificate.content)
    check(private.license is not None, "a license in privacy mode")
    yield "privacy mode: service certificate through licensegate without a token"

    new_session("erin", "multi")
    yield "multi-key content: every key of the content"

    for _ in range(2):
        new_session("finn", "demo")
    third = Session(Device(root_public_key), content["demo"]["kids"])
    expect(gate.license("finn", third.challenge), "stream_limit_reached")
    check(gate.active_streams("finn") == 2, "two streams play")
    yield "stream limit of 2 across real sessions"


def packaged(args):
    """Content a packager encrypted with keys from licensegate's key service, asked for as a
    player of it would: from the `pssh` box licensegate gave the packager."""
    gate = Gate(args)
    content = json.loads(args.content)
    with open(os.path.join(args.dir, "root.der"), "rb") as root:
        root_public_key = root.read()
    for content_id, entry in content.items():
        box = PSSH(entry["pssh"])
        check(box.system_id == PSSH.SystemId.Widevine, f"{content_id}: a Widevine pssh")
        check(sorted(map(str, box.key_ids)) == sorted(entry["kids"]),
              f"{content_id}: the pssh names {box.key_ids}")
        session = Session(Device(root_public_key), None, pssh=entry["pssh"])
        keys = session.take(expect(gate.license("entitled", session.challenge), "ok").content)
        for kid, key in entry["keys"].items():
            check(keys.get(kid) == key, f"{content_id}: key of {kid} is {keys.get(kid)}")
            check_decrypts(args.media, key)
        yield f"{content_id}: licensed from the packager's pssh; its key decrypts the stream"

        refused = Session(Device(root_public_key), None, pssh=entry["pssh"])
        expect(gate.license("unentitled", refused.challenge), "not_entitled")
        yield f"{content_id}: a user not entitled to it gets no license"


if __name__ == "__main__":
    command_line("service", "dir", service, ["--dir"], {"run": scenarios, "packaged": packaged})
