"""The key services for the tests of this folder: moto (AWS KMS) and OpenBao (Vault
Transit), and SoftHSM2 and PyKMIP for the tests parametrised over every provider;
one each per test process, started on first use, stopped when the session ends
(tests/key_service_fixtures.py)."""

from tests.key_service_fixtures import kmip_server, moto_kms, openbao, softhsm

__all__ = ["kmip_server", "moto_kms", "openbao", "softhsm"]
