"""Alipay certificate serial numbers against the values Alipay's SDKs expect for the same
certificates (fixtures/certs/README.md says where each file and value comes from)."""
from pathlib import Path

import pytest

from payment.gateway.certs import cert_sn, pem_certificates, root_cert_sn

CERTS = Path(__file__).parent / "fixtures" / "certs"

# The same root file in all three SDKs, the same expected value in all three.
ROOT_SN = "687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6"


def read(name: str) -> bytes:
    return (CERTS / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # alipay/alipay-sdk-nodejs-all test/antcertutil.test.ts
        # @ 46e22d54c2142860ed6057c4ecd8c262216becb3
        # (fixtures test/fixtures/*.crt @ 0b340c7c794e3db52daf59354fcabbcde230595a)
        ("nodejs/appCertPublicKey_2021001161683774.crt", "866efef280dec9137a87d047ac446315"),
        ("nodejs/alipayCertPublicKey_RSA2.crt", "7513daaaa48aa3ba2e4018d84402479c"),
        # yansongda/pay tests/CertManagerTest.php @ 0d5ad0738b4539d7e19f1c161d8b0f01f649c943
        # (fixture tests/Cert/alipayAppPublicCert.crt @ e4a200dc43dc343511a48c4d31fb4fc9782370f4)
        ("yansongda/alipayAppPublicCert.crt", "e90dd23a37c5c7b616e003970817ff82"),
        # go-pay/gopay alipay/sign_test.go TestGetCertSN `// Output:` (printed, not asserted)
        # @ 38bf88db6fad5a8323a46bbc3d84280dfdc96f35
        # (fixtures alipay/cert/*.crt @ 6b16308a7ac2099e76155106eda5931de6eb3518)
        ("gopay/alipayCertPublicKey_RSA2.crt", "04afd423ea5bd6f5c5482854ed73278c"),
        ("gopay/appCertPublicKey.crt", "4498aaa8ab0c8986c15c41b36186db7d"),
    ],
)
def test_cert_sn_matches_sdk_vectors(name: str, expected: str) -> None:
    assert cert_sn(read(name)) == expected


@pytest.mark.parametrize(
    "name",
    [
        "nodejs/alipayRootCert.crt",  # alipay-sdk-nodejs-all antcertutil.test.ts (above)
        "yansongda/alipayRootCert.crt",  # yansongda/pay CertManagerTest.php (above), CRLF
        "gopay/alipayRootCert.crt",  # go-pay/gopay sign_test.go (above)
    ],
)
def test_root_cert_sn_matches_sdk_vectors(name: str) -> None:
    assert root_cert_sn(read(name)) == ROOT_SN


def test_text_and_bytes_give_the_same_sn() -> None:
    pem = read("nodejs/alipayCertPublicKey_RSA2.crt")
    assert cert_sn(pem.decode("ascii")) == cert_sn(pem)
    root = read("nodejs/alipayRootCert.crt")
    assert root_cert_sn(root.decode("ascii")) == ROOT_SN


def test_root_bundle_split_by_markers_not_blank_lines() -> None:
    blocks = pem_certificates(read("nodejs/alipayRootCert.crt"))
    assert len(blocks) == 4
    # No blank lines between certificates, CRLF line ends, text around them.
    squeezed = b"comment\r\n" + b"\r\n".join(block.replace(b"\n", b"\r\n") for block in blocks)
    assert root_cert_sn(squeezed + b"\r\ntrailer") == ROOT_SN


def test_root_sn_keeps_only_rsa_signed_certificates_in_file_order() -> None:
    sm2, rsa_r1, ecdsa_e1, rsa_itrus = pem_certificates(read("nodejs/alipayRootCert.crt"))
    assert root_cert_sn(rsa_itrus + b"\n" + ecdsa_e1 + b"\n" + sm2 + b"\n" + rsa_r1) == (
        "02941eef3187dddf3d3b83462e1dfcf6_687b59193f3f462dd5336e5abf83c5d8"
    )
    assert root_cert_sn(rsa_r1) == cert_sn(rsa_r1) == "687b59193f3f462dd5336e5abf83c5d8"


def test_root_without_rsa_certificate_is_refused() -> None:
    sm2, _, ecdsa_e1, _ = pem_certificates(read("nodejs/alipayRootCert.crt"))
    with pytest.raises(ValueError, match="no RSA-signed certificate"):
        root_cert_sn(sm2 + b"\n" + ecdsa_e1)


def test_unparseable_certificate_is_skipped_in_a_root_bundle_but_refused_alone() -> None:
    sm2, rsa_r1, ecdsa_e1, rsa_itrus = pem_certificates(read("nodejs/alipayRootCert.crt"))
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
    assert root_cert_sn(broken + b"\n" + rsa_r1 + b"\n" + rsa_itrus) == ROOT_SN
    with pytest.raises(ValueError):
        cert_sn(ecdsa_e1)
    with pytest.raises(ValueError):
        cert_sn(b"not a certificate")


def test_cert_sn_of_a_chain_file_is_its_first_certificate() -> None:
    # Alipay's alipayCertPublicKey_RSA2.crt holds the Alipay certificate and its issuing CA.
    leaf, issuing_ca = pem_certificates(read("yansongda/alipayPublicCert.crt"))
    assert cert_sn(leaf + b"\n" + issuing_ca) == cert_sn(leaf) != cert_sn(issuing_ca)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Computed with OpenJDK 17.0.15: MD5(getIssuerX500Principal().getName() + serial).
        ("java/issuer_email.crt", "523b38fcbce600d1931625e00e5b8329"),  # 1.2.840...9.1=#16..
        ("java/issuer_special.crt", "62b4d316d63f91b5a5541d6abd413da9"),  # a\=b\#c, \#lead\ (space)
        ("java/issuer_multi.crt", "c6c929b3e4db5c7cf9c50636be70c50a"),  # OU=CA+O=Ant
        ("java/issuer_unicode.crt", "a9e6ebcb2723ea0a5feb8390123bb711"),  # 2.5.4.5=#13.., DC
    ],
)
def test_issuer_dn_printed_as_java_prints_it(name: str, expected: str) -> None:
    assert cert_sn(read(name)) == expected
