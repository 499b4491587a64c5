#!/bin/sh
# Makes the secrets deploy/compose.yaml reads, in the folder given (default
# deploy/secrets): a private CA, a server certificate for the database ("db") and
# one for sealedkb ("localhost", "sealedkb"), the database password and the local
# key provider's passphrase. The folder is 0700 (no other host user can reach
# it); the files the containers read are 0644, because compose (outside swarm)
# mounts secrets with the host's owner and mode and the containers run as their
# own users (sealedkb 10001; PostgreSQL gets its own 0600 copy of its key at
# start, compose.yaml). The CA key never leaves this folder (0600). An existing
# file is kept, so a rerun changes nothing.
set -eu
out="${1:-deploy/secrets}"
mkdir -p "$out"
chmod 0700 "$out"
cd "$out"
umask 077
[ -f ca.key ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
[ -f ca.pem ] || openssl req -x509 -new -key ca.key -sha256 -days 825 \
    -subj "/CN=sealedkb deployment CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem
issue() { # name, subjectAltName
    [ -f "$1.key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
    [ -f "$1.pem" ] || openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    [ -f "$1.pem" ] || openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key \
        -CAcreateserial -days 397 -sha256 -out "$1.pem" \
        -extfile /dev/stdin <<EXT
subjectAltName=$3
extendedKeyUsage=serverAuth
EXT
    rm -f "$1.csr"
}
issue db-server db "DNS:db"
issue sealedkb-server sealedkb "DNS:sealedkb,DNS:localhost"
[ -f db-password ] || openssl rand -base64 32 | tr -d '\n' > db-password
[ -f sealedkb-passphrase ] || openssl rand -base64 48 | tr -d '\n' > sealedkb-passphrase
chmod 0600 ca.key
chmod 0644 ca.pem db-server.pem sealedkb-server.pem db-server.key sealedkb-server.key \
    db-password sealedkb-passphrase
echo "secrets in $out; keep ca.key offline"
