#!/bin/sh
# The image's entry point: secrets come as files (compose and Kubernetes secrets,
# the CSI driver) or as environment variables (ECS from Secrets Manager). For each
# NAME_FILE variable among the ones below, NAME is read from that file, so a secret
# never has to sit in the environment of the orchestrator's configuration.
# A file that cannot be read stops the start with exit code 78 (configuration).
set -eu
for name in SEALEDKB_DATABASE_URL SEALEDKB_PASSPHRASE SEALEDKB_ALARM_WEBHOOK_URL \
    SEALEDKB_ALARM_WEBHOOK_SECRET PGPASSWORD; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "sealedkb-entrypoint: ${name}_FILE names a file that cannot be read" >&2
            exit 78
        fi
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    fi
done
# Behind a load balancer that terminates the public TLS (the AWS ALB): a fresh
# self-signed certificate for the hop to this task, in the tmpfs.
if [ -n "${SEALEDKB_TLS_SELF_SIGNED_DIR:-}" ]; then
    python /usr/local/lib/sealedkb-selfsigned.py "$SEALEDKB_TLS_SELF_SIGNED_DIR"
fi
exec sealedkb "$@"
