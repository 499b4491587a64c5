"""The image's HEALTHCHECK: GET $SEALEDKB_HEALTH_URL (default /healthz on the main
listener); exit 0 on 200, 1 otherwise. For an https URL the certificate is verified
against $SEALEDKB_HEALTH_CA (a PEM file) when set, else the system store."""

import os
import ssl
import sys
import urllib.request

url = os.environ.get("SEALEDKB_HEALTH_URL", "http://127.0.0.1:8765/healthz")
ca = os.environ.get("SEALEDKB_HEALTH_CA")
context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
try:
    with urllib.request.urlopen(url, timeout=2, context=context) as answer:  # noqa: S310
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
