# Shared by overhead.sh and program_cost.sh (sourced, from the repository
# root, after they set $work, $tansu and the pids array).

# Writes the loop's 64 files of 8 KiB into the first directory given and
# copies them into the others.
make_loop_files() {
  local first=$1 dir i
  shift
  for i in $(seq 0 63); do
    head -c 8192 /dev/urandom > "$first/file-$i"
    for dir in "$@"; do cp "$first/file-$i" "$dir/file-$i"; done
  done
}

# Starts a tansu broker with memory storage on a free loopback port, in the
# background, and creates the topic bench.events (6 partitions); sets $port
# and adds the broker's pid to pids.
start_bench_broker() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$tansu" broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" > "$work/broker.log" 2>&1 &
  pids+=($!)
  sleep 2
  "$tansu" topic create bench.events --partitions 6 --broker "tcp://127.0.0.1:$port" > /dev/null
}
