#!/usr/bin/env bash
# Runs every spike scenario on 127.0.0.1 with timeouts. Needs `npm ci --prefix /work/main/js`.
# usage: bash spikes/replication/run.sh [debug|release]
set -u
cd "$(dirname "$0")"
PROFILE=${1:-debug}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/main/target-spike}
if [ "$PROFILE" = release ]; then cargo build -q --release || exit 1; else cargo build -q || exit 1; fi
B=$CARGO_TARGET_DIR/$PROFILE/replication-spike
PORT=${PORT:-47900}
pass=0; fail=0
check() { # name, file, pattern...
  local name=$1 file=$2; shift 2
  for p in "$@"; do
    if ! grep -q -- "$p" "$file"; then echo "FAIL $name: missing '$p'"; sed 's/^/    /' "$file" | tail -15; fail=$((fail+1)); return; fi
  done
  echo "ok   $name"; pass=$((pass+1))
}
# rust serves, JS reads: $1 name, $2 extra server args, $3 extra read.js args, rest: expected
rust_serves() {
  local name=$1 sargs=$2 rargs=$3; shift 3
  PORT=$((PORT+1))
  $B serve --port $PORT --once --timeout-s 60 $sargs > /tmp/spike-srv.out 2> /tmp/spike-srv.err &
  local spid=$!
  for _ in $(seq 50); do grep -q '^PORT=' /tmp/spike-srv.out 2>/dev/null && break; sleep 0.1; done
  local key; key=$(grep '^KEY=' /tmp/spike-srv.out | cut -d= -f2)
  timeout 90 node read.js $PORT "$key" $rargs > /tmp/spike-js.out 2>&1
  wait $spid 2>/dev/null
  cat /tmp/spike-srv.err >> /tmp/spike-js.out
  check "$name" /tmp/spike-js.out "$@"
}
# JS serves a compat core, rust reads: $1 name, $2 serve-core.js args, $3 env for the reader, $4 expect
js_serves() {
  local name=$1 jargs=$2 renv=$3 expect=$4; shift 4
  PORT=$((PORT+1))
  node serve-core.js $PORT --timeout-ms 30000 $jargs > /tmp/spike-jsrv.out 2> /tmp/spike-jsrv.err &
  local jpid=$!
  for _ in $(seq 50); do grep -q '^KEY=' /tmp/spike-jsrv.out 2>/dev/null && break; sleep 0.1; done
  local key; key=$(grep '^KEY=' /tmp/spike-jsrv.out | cut -d= -f2)
  RUST_BACKTRACE=0 timeout 60 env $renv $B read-core --port $PORT --key "$key" --expect $expect > /tmp/spike-rd.out 2>&1
  kill $jpid 2>/dev/null; wait $jpid 2>/dev/null
  check "$name" /tmp/spike-rd.out "$@"
}

$B selftest > /tmp/spike-self.out 2>&1; check "fallback proof == create_proof" /tmp/spike-self.out "selftest: fallback proof"

rust_serves "hyperdrive 13 / corestore 7 reads a reopened Rust drive" "" "" \
  'FILES \["/big.bin","/docs/readme.md","/hello.txt"\]' 'HELLO "hello from rust\\n"' 'BIG 200000 MATCH' 'connection ended: Some("peer closed")'
rust_serves "hyperdrive 11 / corestore 6 (hypercore 10) reads it" "" "--v11" 'HELLO "hello from rust\\n"' 'BIG 200000 MATCH'
rust_serves "JS opens the drive before replicating (Opens batched)" "" "--late" 'BIG 200000 MATCH' 'control_in_batch: [1-9]'
rust_serves "memory store (hypercore's own get/create_proof)" "--mem" "" 'BIG 200000 MATCH'
rust_serves "live append reaches a connected JS reader" "--live-ms 2500" "--live" 'LIVE "appended while connected\\n"'
rust_serves "extension messages both ways (raw payload)" "" "--ext" 'EXT \["pong: ping one","pong: ping two"\]'
SPIKE_EAGER_OPEN=1 rust_serves "eager open: JS rejects, Rust closes locally, JS reopens later" "" "" 'BIG 200000 MATCH' 'remote rejected our open'
rust_serves "keepalive keeps a JS stream with a 3 s timeout alive" "--keepalive-ms 1000" "--idle-ms 7000 --js-timeout-ms 3000" 'IDLE_OK true' 'keepalives_out: [1-9]'
rust_serves "without keepalive the same JS stream times out" "--keepalive-ms 0" "--idle-ms 7000 --js-timeout-ms 3000" 'IDLE_OK false'
SPIKE_RAW=1 rust_serves "crate decoder alone dies on batched Opens (expected failure)" "" "--late" 'received invalid message length'

js_serves "Rust reads a JS hypercore 11 compat core" "" "" 4 'READ length=4 contiguous=4' 'block 0: "hello"' 'block 3: 100000 bytes' 'REOPENED length=4'
js_serves "Rust reads a JS hypercore 10 core" "--v10" "" 4 'READ length=4 contiguous=4' 'block 2: "js"'
js_serves "Rust reader follows a live JS append" "--live-ms 2000" "" 5 'READ length=5 contiguous=5' 'block 4: "live block"'
js_serves "JS 11 NoData (trailing reason) handled" "" "SPIKE_PROBE_NODATA=1" 4 'no data for request' 'READ length=4'
js_serves "crate decoder alone dies on JS 11 NoData (expected failure)" "" "SPIKE_PROBE_NODATA=1 SPIKE_RAW=1" 4 'compact encoding operation to fail'
js_serves "uint24le_framing stalls on a 100 KB frame (expected failure)" "" "SPIKE_OLD_FRAMING=1" 4 '\-> 4 block requests'
if grep -q 'READ length' /tmp/spike-rd.out; then echo "  (note: old framing did not stall this time)"; fi

$B persisttest-raw u4,0 > /tmp/spike-p.out 2>&1; check "hypercore: reader core with unflushed verify entries fails to reopen (expected)" /tmp/spike-p.out 'reopen FAILED' 'after truncating the oplog to 8192'
$B persisttest-raw u4,0,1,2,3,a,u5,4,p,p > /tmp/spike-p.out 2>&1; check "hypercore: padding writes to a flush keeps everything" /tmp/spike-p.out 'reopened: Info { length: 5, byte_length: 36, contiguous_length: 5'

echo "$pass passed, $fail failed"
[ $fail = 0 ]
