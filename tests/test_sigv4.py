"""The S3 store's request signing gives AWS's published signatures (hub/sigv4.py).

Vectors: the AWS Signature Version 4 test suite (get-vanilla, post-vanilla, get-vanilla-query-order-key:
its .req, .creq, .sts and .authz files), and the Amazon S3 API reference's "Signature Calculations
for the Authorization Header" examples (GET Object with a Range, PUT Object). A real server checks the
store's signatures too: tests/test_media_store.py.
"""

from __future__ import annotations

import hashlib

import pytest

from hub import sigv4

SUITE_KEYS = {"access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
SUITE_HEADERS = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"}
SUITE_SCOPE = "20150830/us-east-1/service/aws4_request"
S3_KEYS = {"access_key": "AKIAIOSFODNN7EXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
S3_HOST = "examplebucket.s3.amazonaws.com"
S3_DATE = "20130524T000000Z"


def suite_authz(signature: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{SUITE_SCOPE}, SignedHeaders=host;x-amz-date,"
        f" Signature={signature}"
    )


@pytest.mark.parametrize(
    ("method", "query", "signature"),
    [
        ("GET", [], "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),  # get-vanilla
        ("POST", [], "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),  # post-vanilla
        (
            "GET",
            [("Param1", "value2"), ("Param1", "Value1")],  # get-vanilla-query-order-key
            "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        ),
    ],
)
def test_the_signature_v4_test_suite_vectors(
    method: str, query: list[tuple[str, str]], signature: str
) -> None:
    authorization = sigv4.authorization(
        method,
        "/",
        query,
        SUITE_HEADERS,
        sigv4.EMPTY_SHA256,
        region="us-east-1",
        service="service",
        **SUITE_KEYS,
    )
    assert authorization == suite_authz(signature)


def test_the_suites_canonical_request_and_string_to_sign_for_query_order() -> None:
    request, signed = sigv4.canonical_request(
        "GET", "/", [("Param1", "value2"), ("Param1", "Value1")], SUITE_HEADERS, sigv4.EMPTY_SHA256
    )
    assert request == (
        "GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signed == "host;x-amz-date"
    assert sigv4.string_to_sign("20150830T123600Z", SUITE_SCOPE, request) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89"
    )


def test_s3s_documented_get_object_with_a_range() -> None:
    headers = {
        "host": S3_HOST,
        "range": "bytes=0-9",
        "x-amz-content-sha256": sigv4.EMPTY_SHA256,
        "x-amz-date": S3_DATE,
    }
    request, _ = sigv4.canonical_request("GET", "/test.txt", [], headers, sigv4.EMPTY_SHA256)
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )
    authorization = sigv4.authorization(
        "GET", "/test.txt", [], headers, sigv4.EMPTY_SHA256, region="us-east-1", service="s3", **S3_KEYS
    )
    assert authorization == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        " SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        " Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_s3s_documented_put_object_encodes_the_key_once() -> None:
    payload = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    headers = {
        "date": "Fri, 24 May 2013 00:00:00 GMT",
        "host": S3_HOST,
        "x-amz-date": S3_DATE,
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": payload,
    }
    authorization = sigv4.authorization(
        "PUT", "/test$file.text", [], headers, payload, region="us-east-1", service="s3", **S3_KEYS
    )
    assert authorization.endswith(
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )
    assert sigv4.encode_path("/test$file.text") == "/test%24file.text"


def test_header_values_are_trimmed_and_inner_spaces_collapsed() -> None:
    request, _ = sigv4.canonical_request("GET", "/", [], {"X-Amz-Date": "  a   b  "}, sigv4.EMPTY_SHA256)
    assert "\nx-amz-date:a b\n" in request


def test_amz_date_is_utc_basic_format() -> None:
    assert sigv4.amz_date(1_440_938_160) == "20150830T123600Z"
