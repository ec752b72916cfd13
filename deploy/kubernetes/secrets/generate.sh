#!/bin/sh
# Makes the files the Secrets of deploy/kubernetes are generated from, in
# this directory: a random webhook token, and a self-signed certificate for
# the name the apiserver checks (peregrine.peregrine.svc), valid two years.
# Leaves existing files alone; delete them to make new ones.
set -eu
cd "$(dirname "$0")"
name=${PEREGRINE_TLS_NAME:-peregrine.peregrine.svc}
if [ ! -f webhook-token ]; then
    umask 077
    openssl rand -hex 32 | tr -d '\n' >webhook-token
    umask 022
fi
if [ ! -f tls.crt ] || [ ! -f tls.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 730 -subj "/CN=$name" -addext "subjectAltName=DNS:$name" \
        -keyout tls.key -out tls.crt 2>/dev/null
fi
echo "secrets: $(pwd)/webhook-token, tls.crt, tls.key"
