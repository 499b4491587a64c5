"""The key services for the tests of this folder: SoftHSM2 and PyKMIP, and OpenBao for
the custody test that moves to either an HSM or Vault Transit; one each per test
process, started on first use, stopped when the session ends
(tests/key_service_fixtures.py)."""

from tests.key_service_fixtures import kmip_server, moto_kms, openbao, softhsm

__all__ = ["kmip_server", "moto_kms", "openbao", "softhsm"]
