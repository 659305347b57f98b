#!/usr/bin/env bash
# Regenerates the interop test CA and server certificate (valid 100 years). The server
# certificate names *.test.google.fr, the host override the interop suite uses.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 36500 -subj "/CN=anygrpc interop test CA"
openssl req -newkey rsa:2048 -nodes -keyout server1.key -out server1.csr -subj "/CN=*.test.google.fr"
printf "subjectAltName=DNS:*.test.google.fr,DNS:waterzooi.test.google.be,DNS:*.test.youtube.com,DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" > server1.ext
openssl x509 -req -in server1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server1.pem -days 36500 -extfile server1.ext
rm -f server1.csr server1.ext ca.srl ca.key
