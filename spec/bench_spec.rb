# frozen_string_literal: true

require "json"
require "tmpdir"

# The benchmark (bench/run.rb, `rake bench`) in its smoke mode: tiny rounds,
# short contention runs, every contender and every section. It checks that
# the report and the JSON hold every figure - never the figures' values:
# timings belong to the bench, not to the tests.
RSpec.describe "bench/run.rb --smoke" do
  root = File.expand_path("..", __dir__)
  redis = system("command -v redis-server >/dev/null 2>&1")
  gnuplot = system("command -v gnuplot >/dev/null 2>&1")
  # the report's labels (bench/contenders.rb), without loading the bench and its peers' gems here
  labels = {
    "floor" => "floor (C add+delete)", "MegaMutex" => "MegaMutex", "dalli" => "dalli lock (add/get/delete)",
    "suo" => "suo (Suo::Client::Memcached)", "redlock" => "redlock-rb (1 redis)"
  }

  before(:context) do
    @out = Dir.mktmpdir("bench-smoke")
    env = { "BENCH_BACKOFF_MIN" => "0.001", "BENCH_BACKOFF_MAX" => "0.04" }
    log = File.join(@out, "run.log")
    pid = Process.spawn(env, RbConfig.ruby, File.join(root, "bench", "run.rb"), "--smoke", "--out", @out,
                        chdir: root, out: log, err: [:child, :out], pgroup: true)
    deadline = monotonic + 90 # a hang guard, not a timing check
    status = nil
    until (status = Process.wait2(pid, Process::WNOHANG)&.last)
      if monotonic > deadline
        Process.kill(:KILL, -pid) rescue nil
        Process.wait(pid) rescue nil
        raise "bench/run.rb --smoke did not finish within 90 s:\n#{File.read(log)}"
      end
      sleep 0.05
    end
    @status = status
    @log = File.read(log)
    @text = File.exist?(File.join(@out, "latest.txt")) ? File.read(File.join(@out, "latest.txt")) : ""
    @json = File.exist?(File.join(@out, "latest.json")) ? JSON.parse(File.read(File.join(@out, "latest.json"))) : nil
  end

  after(:context) do
    FileUtils.rm_rf(@out) if @out
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  let(:contenders) { redis ? %w[floor MegaMutex dalli suo redlock] : %w[floor MegaMutex dalli suo] }
  # the uncontended section also splits MegaMutex's cycle: its C calls alone
  let(:cycle_rows) { contenders + ["MegaMutex C"] }

  it "runs to the end and writes latest.txt and latest.json" do
    expect(@status).to be_success, @log
    expect(@text).not_to be_empty
    expect(@json).to be_a(Hash)
    expect(@log).to include(@text.lines.first.strip) # the report is printed too
  end

  it "reports the machine and the settings, with the ENV overrides" do
    expect(@text).to match(/^machine: \d+ cores, /)
    expect(@text).to match(/kernel \S+/)
    expect(@text).to include("ruby ", "memcached 1.", "libmemcached ")
    expect(@text).to include("backoff_min 1 ms, backoff_max 40 ms")
    expect(@json["machine"].keys).to include("nproc", "cpu", "kernel", "ruby", "memcached", "libmemcached", "redis")
    expect(@json["settings"]).to include("backoff_min" => 0.001, "backoff_max" => 0.04)
    expect(@json["settings"]["env_overrides"]).to include("BENCH_BACKOFF_MAX" => "0.04")
  end

  it "has the uncontended cycle of every contender, the floor included, and both ratios" do
    expect(@text).to include("== 1. Uncontended cycle")
    %w[floor MegaMutex dalli suo].each do |name|
      expect(@text).to include(labels.fetch(name))
    end
    cycle = @json["cycle"]
    expect(cycle["contenders"].keys).to match_array(cycle_rows)
    expect(@text).to include("MegaMutex, C calls only")
    cycle["contenders"].each_value do |c|
      expect(c.keys).to include("median_us", "p99_us", "min_us", "round_medians_us", "requests_per_cycle")
      expect(c["median_us"]).to be_a(Numeric).and be_positive
      expect(c["round_medians_us"].size).to eq(cycle["rounds"])
    end
    expect(cycle["ratios"].keys).to include("megamutex_over_floor", "fastest_peer", "fastest_peer_over_megamutex")
    expect(@text).to match(%r{MegaMutex / floor = [\d.]+ \(target <= 1\.25: (PASS|MISS)\)})
    expect(@text).to match(%r{where MegaMutex's cycle goes: [\d.]+ µs the floor's two round trips, [+-][\d.]+ µs the C part})
    expect(@text).to match(%r{fastest peer \(\w+\) / MegaMutex = [\d.]+ \(target >= 1\.7: (PASS|MISS)\)})
  end

  it "benchmarks redlock-rb against its own redis-server" do
    skip "redis-server is not installed (bench/setup installs it): redlock-rb was NOT benchmarked" unless redis

    expect(@text).to include(labels.fetch("redlock"))
    expect(@json["cycle"]["contenders"]).to have_key("redlock")
    expect(@json["contention"]["runs"].map { |r| r["contender"] }).to include("redlock")
  end

  it "has the contention table for MegaMutex and every peer, with every figure" do
    expect(@text).to include("== 2. Contention")
    runs = @json["contention"]["runs"]
    expect(runs.map { |r| r["contender"] }.uniq).to match_array(contenders - ["floor"])
    expect(runs.map { |r| [r["contender"], r["hold_ms"]] }).to include(["MegaMutex", 0.0], ["MegaMutex", 1.0])
    runs.each do |r|
      expect(r.keys).to include("procs", "hold_ms", "acquisitions", "throughput", "serial_ideal", "efficiency",
                                "min_share", "max_share", "wait_p50_ms", "wait_p99_ms", "requests_per_acquisition")
      expect(r["acquisitions"]).to be_positive
      expect(r["counts"].size).to eq(r["procs"])
    end
  end

  it "has the scaling table, the waiting cost and the targets" do
    expect(@text).to include("== 3. Scaling", "== 4. Waiting cost", "== Targets")
    expect(@json["scaling"]["runs"].map { |r| r["procs"] }).to eq([1, 2])
    expect(@json["scaling"]["runs"]).to all(include("throughput", "per_process", "speedup"))
    expect(@json["waiting"].keys).to include("requests_per_second", "requests_per_attempt", "ceiling_requests_per_second",
                                             "steady_ceiling_requests_per_second", "backoff_min", "backoff_max")
    names = @json["targets"].map { |t| t["name"] }
    expect(names).to include("cycle: MegaMutex / floor", "P=8 hold 1 ms: throughput / serial ideal",
                             "P=8 hold 1 ms: min share of fair", "P=8 hold 1 ms: p99 wait (ms)",
                             "P=8 hold 1 ms: server requests per acquisition",
                             "8 procs x 8 threads vs x 1: requests per acquisition",
                             "waiting: requests/s of one waiter vs ceiling")
    # the smoke mode runs no 32 processes: those targets are named as not evaluated
    expect(@json["notes"].join).to include("P=32 targets not evaluated")
    expect(@json["targets"]).to all(include("value", "target", "pass"))
    expect(@text.scan(/^ {3}(PASS|MISS) /).size).to eq(@json["targets"].size)
  end

  it "has the threads section: 8 processes x 1 thread against x 8 threads on one key, and their ratio" do
    expect(@text).to include("== 2b. Threads")
    threads = @json["threads"]
    expect(threads["runs"].map { |r| r["threads"] }).to eq([1, 8])
    threads["runs"].each do |r|
      expect(r["procs"]).to eq(8)
      expect(r["acquisitions"]).to be_positive
      expect(r.keys).to include("requests_per_acquisition", "thread_min_share", "min_share", "wait_p99_ms")
    end
    expect(threads["ratio"]).to be_a(Numeric).and be_positive
    expect(@text).to match(%r{x 8 threads / x 1 thread = [\d.]+ \(target <= 1\.2: (PASS|MISS)\)})
  end

  it "draws cycle.png and contention.png" do
    skip "gnuplot is not installed (bench/setup installs gnuplot-nox)" unless gnuplot

    %w[cycle.png contention.png].each do |png|
      path = File.join(@out, png)
      expect(File).to exist(path)
      expect(File.binread(path, 8)).to eq("\x89PNG\r\n\x1A\n".b)
    end
  end
end


# The MariaDB part of `rake bench` (bench/mysql.rb) in its smoke mode:
# MegaMutex :mysql over TCP and the unix socket, with_advisory_lock 5.3 and a
# hand-written ActiveRecord GET_LOCK on the same private mariadbd, MegaMutex
# :memcached beside them; every section, tiny sizes. As above: the report and
# the JSON hold every figure, whatever the figures are.
RSpec.describe "bench/mysql.rb --smoke" do
  root = File.expand_path("..", __dir__)
  mariadb = Servers::MariaDB.available?
  mysql_rows = ["MegaMutex :mysql, TCP", "MegaMutex :mysql, unix socket", "MegaMutex :memcached, TCP"]
  peer_rows = ["with_advisory_lock, TCP", "with_advisory_lock, unix socket", "AR GET_LOCK(name, 60), TCP"]

  def self.run_bench(root, out, *args, env: {})
    log = File.join(out, "run.log")
    pid = Process.spawn(env, RbConfig.ruby, File.join(root, "bench", "mysql.rb"), "--smoke", "--out", out, *args,
                        chdir: root, out: log, err: [:child, :out], pgroup: true)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 180 # a hang guard, not a timing check
    until (status = Process.wait2(pid, Process::WNOHANG)&.last)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill(:KILL, -pid) rescue nil
        Process.wait(pid) rescue nil
        raise "bench/mysql.rb --smoke did not finish within 180 s:\n#{File.read(log)}"
      end
      sleep 0.05
    end
    [status, File.read(log)]
  end

  before(:context) do
    @out = Dir.mktmpdir("bench-mysql-smoke")
    next unless mariadb

    @status, @log = self.class.run_bench(root, @out)
    @text = File.exist?(File.join(@out, "mysql.txt")) ? File.read(File.join(@out, "mysql.txt")) : ""
    @json = File.exist?(File.join(@out, "mysql.json")) ? JSON.parse(File.read(File.join(@out, "mysql.json"))) : nil
  end

  after(:context) do
    FileUtils.rm_rf(@out) if @out
  end

  before do |example|
    next if example.metadata[:without_mariadb]

    skip "mariadbd is not installed (bin/setup installs mariadb-server): the :mysql rows were NOT benchmarked" unless mariadb
  end

  # The peers are in the Gemfile's bench group; without them the bench says
  # so in a NOTE and runs the MegaMutex rows alone.
  def skip_unless_peers
    note = @json["notes"].grep(/with_advisory_lock .*SKIPPED/).first
    skip "with_advisory_lock was NOT benchmarked: #{note}" if note
  end

  it "runs to the end and writes mysql.txt and mysql.json" do
    expect(@status).to be_success, @log
    expect(@text).not_to be_empty
    expect(@json).to be_a(Hash)
    expect(@log).to include(@text.lines.first.strip) # the report is printed too
  end

  it "reports the machine, the servers, the peers' versions and the load" do
    expect(@text).to match(/^machine: \d+ cores, /)
    expect(@text).to match(/mariadbd \d+\.\d+\.\d+-MariaDB/)
    expect(@text).to include("memcached 1.", "load average", "waiting: ")
    expect(@json["machine"].keys).to include("nproc", "cpu", "kernel", "ruby", "mariadb", "memcached", "activerecord",
                                             "trilogy", "with_advisory_lock", "loadavg_start", "loadavg_end")
  end

  it "has the uncontended cycle of MegaMutex :mysql over TCP and the unix socket, beside :memcached" do
    expect(@text).to include("== 1. Uncontended cycle")
    cycle = @json["cycle"]
    rows = cycle["contenders"].values
    expect(rows.map { |r| r["label"] }).to include(*mysql_rows)
    mysql_rows.each { |label| expect(@text).to include(label) }
    rows.each do |r|
      expect(r.keys).to include("median_us", "p99_us", "min_us", "round_medians_us", "requests_per_cycle")
      expect(r["median_us"]).to be_a(Numeric).and be_positive
      expect(r["round_medians_us"].size).to eq(cycle["rounds"])
      expect(r["requests_per_cycle"]).to be_positive # the server's own counter moved
    end
  end

  it "has the handoff between 4 processes of every contender, with the turns counted" do
    expect(@text).to include("== 2. Handoff: 4 processes")
    handoff = @json["handoff"]
    expect(handoff["contenders"].keys).to match_array(@json["cycle"]["contenders"].keys)
    handoff["contenders"].each_value do |r|
      expect(r["cycles"]).to eq(handoff["workers"] * handoff["cycles_per_worker"])
      expect(r["turns"]).to be_between(0, r["cycles"] - 1)
      expect(r.keys).to include("median_us", "p99_us", "max_us")
    end
    # MegaMutex :mysql's waiters are queued in the server: the lock passes on
    expect(handoff["contenders"]["mysql-tcp"]["turns"]).to be_positive
  end

  it "has the contention section: P processes on one key, shares, waits and server requests per acquisition" do
    expect(@text).to include("== 3. Contention: 4 processes on ONE key")
    co = @json["contention"]
    expect(co["contenders"].keys).to match_array(@json["cycle"]["contenders"].keys)
    co["contenders"].each_value do |r|
      expect(r["acquisitions"]).to be_positive
      expect(r["counts"].size).to eq(co["procs"])
      expect(r.keys).to include("throughput", "min_share", "max_share", "wait_p50_ms", "wait_p99_ms", "wait_max_ms",
                                "requests_per_acquisition")
    end
  end

  it "benchmarks with_advisory_lock and an ActiveRecord GET_LOCK on the same server, with the ratios" do
    skip_unless_peers
    peer_rows.each { |label| expect(@text).to include(label) }
    %w[cycle handoff contention].each do |section|
      expect(@json[section]["contenders"].keys).to include("wal-tcp", "wal-socket", "getlock-tcp")
    end
    expect(@json["ratios"].map { |x| [x["megamutex"], x["peer"]] }).to eq([%w[mysql-tcp wal-tcp], %w[mysql-socket wal-socket]])
    @json["ratios"].each do |x|
      expect(x.keys).to include("cycle_median", "handoff_median", "contention_throughput", "contention_wait_p50",
                                "contention_wait_p99")
      expect(x["cycle_median"]).to be_a(Numeric).and be_positive
    end
    expect(@text).to match(%r{^   mysql-tcp +/ wal-tcp +cycle [\d.]+; handoff ([\d.]+|-) \(turns to another process: \d+ against \d+ of 80\); P=4: throughput [\d.]+, wait p99 [\d.]+ \(min share [\d.]+ against [\d.]+\)})
    expect(@json["ratios"]).to all(include("handoff_turns", "contention_min_share"))
  end

  it "gives the README rows: bench/readme_tables.rb --mysql prints every contender's row and the ratios" do
    out, err, status = Open3.capture3(RbConfig.ruby, File.join(root, "bench", "readme_tables.rb"), "--mysql",
                                      File.join(@out, "mysql.json"))
    expect(status).to be_success, err
    expect(out).to include("Run: `bundle exec ruby bench/mysql.rb` (smoke", "| lock | cycle median µs |")
    @json["cycle"]["contenders"].each_value { |c| expect(out).to match(/^\| #{Regexp.escape(c['label'])} \| \d+ \|/) }
    expect(out.scan(%r{^MegaMutex :mysql / with_advisory_lock, (tcp|socket): cycle [\d.]+}).flatten).to eq(%w[tcp socket]) if @json["ratios"].any?
  end

  it "without mariadbd says it skipped the :mysql rows and exits 0", :without_mariadb do
    out = Dir.mktmpdir("bench-mysql-none", @out)
    empty = Dir.mktmpdir("bin", @out) # a PATH with no mariadbd on it (ruby is started by its full path)
    status, log = self.class.run_bench(root, out, "--contenders", "mysql-tcp", env: { "PATH" => empty })
    expect(status).to be_success, log
    expect(log).to include("SKIPPED: mariadbd or the mariadb client is not installed")
    expect(File).not_to exist(File.join(out, "mysql.json"))
  end
end
