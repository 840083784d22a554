# frozen_string_literal: true

# MegaMutex benchmark (issues #4, #13): what one lock cycle costs against the floor
# libmemcached can do and against peers (suo, redlock-rb, a plain dalli lock),
# and how the lock behaves under contention, across keys and while waiting.
#
#   bundle exec rake bench            # full run, a few minutes
#   bundle exec rake bench QUICK=1    # or rake bench:quick: about 95 s
#   bundle exec ruby bench/run.rb --help
#
# It starts its own memcached (-M, free loopback port) and redis-server (for
# redlock-rb), and stops them and every worker process when it ends, Ctrl-C
# included. Results: bench/results/latest.txt, latest.json, cycle.png,
# contention.png (bench/plot.gp).
#
# MegaMutex's settings can be overridden for experiments:
#   BENCH_BACKOFF_MIN=0.001 BENCH_BACKOFF_MAX=0.02 BENCH_LOCK_TTL=30 bundle exec rake bench

begin
  require "bundler/setup"
rescue LoadError
  nil
end
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))

require "optparse"
require "json"
require "etc"
require "rbconfig"
require "open3"
require "time"
require "mega_mutex"
require_relative "servers"
require_relative "contenders"
require_relative "workers"

module Bench
  ROOT = File.expand_path("..", __dir__)

  def self.now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # ---- statistics ----------------------------------------------------------

  module Stats
    module_function

    def percentile(values, pct)
      return nil if values.empty?

      sorted = values.sort
      sorted[((sorted.size - 1) * pct / 100.0).round]
    end

    def median(values)
      return nil if values.empty?

      s = values.sort
      n = s.size
      n.odd? ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0
    end

    def mean(values)
      values.empty? ? nil : values.sum / values.size
    end
  end

  # ---- options -------------------------------------------------------------

  MODES = {
    # rounds x cycles per contender; contention P and seconds; scaling P and seconds; waiting hold
    "full" => { rounds: 15, cycles: 2000, procs: [2, 8, 32], holds: [0.0, 0.001], peer_holds: [0.001],
                seconds: 5.0, scale_procs: [1, 2, 8, 32], scale_rounds: 3, scale_seconds: 2.0, wait_seconds: 2.0,
                thread_rounds: 3, thread_seconds: 3.0 },
    "quick" => { rounds: 6, cycles: 1000, procs: [2, 8, 32], holds: [0.0, 0.001], peer_holds: [0.001],
                 seconds: 1.5, scale_procs: [1, 2, 8], scale_rounds: 2, scale_seconds: 0.6, wait_seconds: 1.0,
                 thread_rounds: 2, thread_seconds: 1.5 },
    # for spec/bench_spec.rb: every contender and every section, tiny sizes
    "smoke" => { rounds: 2, cycles: 100, procs: [2, 8], holds: [0.0, 0.001], peer_holds: [0.001],
                 seconds: 0.3, scale_procs: [1, 2], scale_rounds: 1, scale_seconds: 0.3, wait_seconds: 0.5,
                 thread_rounds: 1, thread_seconds: 0.3 }
  }.freeze

  Options = Struct.new(:mode, :rounds, :cycles, :procs, :holds, :peer_holds, :seconds, :scale_procs,
                       :scale_rounds, :scale_seconds, :wait_seconds, :thread_rounds, :thread_seconds, :out, :plot,
                       :contenders, keyword_init: true)

  def self.parse_options(argv)
    mode = "full"
    given = {}
    out = File.join(ROOT, "bench", "results")
    plot = true
    contenders = nil
    parser = OptionParser.new do |p|
      p.banner = "Usage: bundle exec ruby bench/run.rb [options]   (or: bundle exec rake bench [QUICK=1])"
      p.on("--quick", "short run, about 95 s (6 x 1000 cycles, P = 2, 8, 32, 1.5 s each)") { mode = "quick" }
      p.on("--smoke", "tiny run that only checks every section works (the spec's)") { mode = "smoke" }
      p.on("--rounds N", Integer, "alternating rounds of uncontended cycles") { |v| given[:rounds] = v }
      p.on("--cycles N", Integer, "cycles per contender per round") { |v| given[:cycles] = v }
      p.on("--procs LIST", Array, "contention process counts, e.g. 2,8,32") { |v| given[:procs] = v.map { |x| Integer(x) } }
      p.on("--seconds S", Float, "seconds per contention run") { |v| given[:seconds] = v }
      p.on("--scale-procs LIST", Array, "scaling process counts, e.g. 1,2,8,32") { |v| given[:scale_procs] = v.map { |x| Integer(x) } }
      p.on("--scale-rounds N", Integer, "alternating rounds of scaling runs (median reported)") { |v| given[:scale_rounds] = v }
      p.on("--scale-seconds S", Float, "seconds per scaling run") { |v| given[:scale_seconds] = v }
      p.on("--thread-rounds N", Integer, "alternating rounds of 8 processes x 1 thread vs x 8 threads") { |v| given[:thread_rounds] = v }
      p.on("--thread-seconds S", Float, "seconds per threads run") { |v| given[:thread_seconds] = v }
      p.on("--wait-seconds S", Float, "how long the holder keeps the key in the waiting-cost run") { |v| given[:wait_seconds] = v }
      p.on("--contenders LIST", Array, "subset of #{Contenders::NAMES.join(',')} (the floor always runs)") { |v| contenders = v }
      p.on("--out DIR", "where latest.txt/json and the PNGs go (default bench/results)") { |v| out = File.expand_path(v) }
      p.on("--no-plot", "skip gnuplot") { plot = false }
      p.on("-h", "--help", "this help") do
        puts p
        exit 0
      end
    end
    parser.parse!(argv)
    raise OptionParser::InvalidArgument, argv.join(" ") unless argv.empty?

    bad = (contenders || []) - Contenders::NAMES
    raise OptionParser::InvalidArgument, "--contenders #{bad.join(',')}" unless bad.empty?

    Options.new(**MODES.fetch(mode).merge(given), mode: mode, out: out, plot: plot,
                                                   contenders: contenders || Contenders::NAMES.dup)
  end

  # ---- the run -------------------------------------------------------------

  class Runner
    MM_STATS = %w[cmd_get cmd_set cmd_touch delete_hits delete_misses incr_hits incr_misses decr_hits decr_misses].freeze

    def initialize(opts)
      @opts = opts
      @children = []
      @started_wall = Time.now
      @started = Bench.now
      @notes = []
    end

    def run
      FileUtils.mkdir_p(@opts.out)
      @build_dir = File.join(ROOT, "bench", "build")
      @floor_bin = build_floor
      @memcached = Servers::Memcached.new(args: %w[-M -m 64 -c 4096]).start
      if @opts.contenders.include?("redlock")
        if RedisServer.available?
          @redis = RedisServer.new.start
        else
          @opts.contenders.delete("redlock")
          @notes << "redlock-rb SKIPPED: redis-server is not installed (bench/setup installs it)"
          warn "bench: #{@notes.last}"
        end
      end
      @ctx = { memcached: @memcached.address, redis: @redis&.url, lock_ttl: 30 }
      Contenders.configure_megamutex(@memcached.address)
      cfg = MegaMutex.configuration
      @ctx[:backoff_min] = cfg.backoff_min
      @ctx[:backoff_max] = cfg.backoff_max
      @ctx[:lock_ttl] = cfg.lock_ttl
      @machine = machine
      @machine[:loadavg_start] = loadavg
      progress "MegaMutex bench (#{@opts.mode}) on memcached #{@machine[:memcached]} #{@memcached.address}" \
               "#{@redis ? ", redis #{@machine[:redis]} 127.0.0.1:#{@redis.port}" : ''}"

      @cycle = uncontended
      @floor_us = @cycle[:contenders]["floor"][:median_us]
      @contention = contention
      @threads = threads_section
      @scaling = scaling
      @waiting = waiting
      @duration = Bench.now - @started
      @machine[:loadavg_end] = loadavg
      results = assemble
      text = Report.new(results).text
      File.write(File.join(@opts.out, "latest.txt"), text)
      File.write(File.join(@opts.out, "latest.json"), JSON.pretty_generate(results) + "\n")
      puts text
      plot(results) if @opts.plot
      0
    ensure
      kill_children
      @redis&.stop
      @memcached&.stop
    end

    private

    def progress(msg)
      $stderr.puts format("[%6.1f s] %s", Bench.now - @started, msg)
    end

    # -- the floor binary --

    def build_floor
      FileUtils.mkdir_p(@build_dir)
      src = File.join(ROOT, "bench", "floor.c")
      bin = File.join(@build_dir, "floor")
      return bin if File.exist?(bin) && File.mtime(bin) >= File.mtime(src)

      flags, status = Open3.capture2("pkg-config", "--cflags", "--libs", "libmemcached")
      raise "pkg-config libmemcached failed: install libmemcached-dev (bench/setup)" unless status.success?

      cmd = "cc -O2 -Wall -o #{bin} #{src} #{flags.strip}"
      out, status = Open3.capture2e(cmd)
      raise "building the floor failed: #{cmd}\n#{out}" unless status.success?

      bin
    end

    def run_floor(cycles)
      out, err, status = Open3.capture3(@floor_bin, "127.0.0.1", @memcached.port.to_s, cycles.to_s, "--raw",
                                        "--warmup", "50", "--key", "bench:floor")
      raise "floor failed: #{err}" unless status.success?

      out.lines.grep(/\A\d+\n\z/).map { |l| l.to_i / 1000.0 }
    end

    # -- server request counters --

    def mc_requests
      st = @memcached.stats
      MM_STATS.sum { |k| st[k].to_i }
    end

    def requests_for(name)
      if Contenders::SERVER[name] == :redis
        @redis.requests
      else
        mc_requests
      end
    end

    # Requests between two counter readings (both servers' counts leave out
    # the reading itself).
    def request_delta(_name, before, after)
      after - before
    end

    # -- 1. uncontended cycle --

    def uncontended
      names = ["floor"] + @opts.contenders
      names << "MegaMutex C" if @opts.contenders.include?("MegaMutex") # the C part of MegaMutex's cycle
      locks = (names - ["floor"]).to_h { |n| [n, Contenders.build(n, @ctx)] }
      samples = names.to_h { |n| [n, []] }
      medians = names.to_h { |n| [n, []] }
      requests = names.to_h { |n| [n, []] }
      progress "uncontended cycle: #{@opts.rounds} rounds x #{@opts.cycles} cycles, alternating #{names.join(', ')}"
      @opts.rounds.times do |round|
        names.rotate(round % names.size).each do |name|
          GC.start
          key = "cycle-#{name}"
          if name == "floor"
            before = mc_requests
            times = run_floor(@opts.cycles)
            requests[name] << (mc_requests - before - 1 - (50 * 2)).fdiv(@opts.cycles) # its first delete + warm-up
          else
            lock = locks[name]
            50.times { lock.synchronize(key) {} }
            times = Array.new(@opts.cycles)
            before = requests_for(name)
            i = 0
            n = @opts.cycles
            while i < n
              t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
              lock.synchronize(key) {}
              times[i] = (Process.clock_gettime(Process::CLOCK_MONOTONIC) - t) * 1e6
              i += 1
            end
            requests[name] << request_delta(name, before, requests_for(name)).fdiv(n)
          end
          samples[name].concat(times)
          medians[name] << Stats.median(times)
        end
        progress format("  round %d/%d: %s", round + 1, @opts.rounds,
                        names.map { |n| format("%s %.0f", n, medians[n].last) }.join(", "))
      end
      contenders = names.to_h do |n|
        [n, { label: Contenders::LABELS[n], server: Contenders::SERVER[n].to_s,
              median_us: Stats.median(medians[n]).round(1), p99_us: Stats.percentile(samples[n], 99).round(1),
              min_us: samples[n].min.round(1), mean_us: Stats.mean(samples[n]).round(1),
              round_medians_us: medians[n].map { |x| x.round(1) },
              requests_per_cycle: Stats.median(requests[n]).round(2) }]
      end
      { rounds: @opts.rounds, cycles: @opts.cycles, order: "rotated each round", contenders: contenders }
    end

    # -- worker processes --

    # Runs `count` workers (bench/workers.rb) that each loop `hold` on their
    # key for `seconds`. Returns each worker's result and the server's
    # requests meanwhile.
    def run_workers(name, count, seconds, key_for:, hold:, threads: 1)
      results, before, after = BenchWorkers.run(name, count, build: -> { Contenders.build(name, @ctx) }, children: @children,
                                                             measure: -> { requests_for(name) }) do |lock, i|
        if threads == 1
          worker_loop(lock, key_for.call(i), hold, seconds)
        else
          threads_loop(lock, key_for.call(i), hold, seconds, threads)
        end
      end
      [results, request_delta(name, before, after)]
    end

    def worker_loop(lock, key, hold, seconds)
      waits = []
      holds = []
      count = 0
      t0 = Bench.now
      deadline = t0 + seconds
      while (t = Bench.now) < deadline
        lock.synchronize(key) do
          t_in = Bench.now
          waits << t_in - t
          sleep(hold) if hold.positive?
          holds << Bench.now - t_in
        end
        count += 1
      end
      { pid: Process.pid, count: count, start: t0, stop: Bench.now, waits: waits, hold_mean: Stats.mean(holds) }
    end

    # `threads` threads of one worker looping on the same key, each with its
    # own lock object; one result for the process.
    def threads_loop(lock, key, hold, seconds, threads)
      parts = Array.new(threads) { Thread.new { worker_loop(lock, key, hold, seconds) } }.map(&:value)
      { pid: Process.pid, count: parts.sum { |r| r[:count] }, start: parts.map { |r| r[:start] }.min,
        stop: parts.map { |r| r[:stop] }.max, waits: parts.flat_map { |r| r[:waits] },
        hold_mean: Stats.mean(parts.filter_map { |r| r[:hold_mean] }), thread_counts: parts.map { |r| r[:count] } }
    end

    def kill_children
      @children.each { |pid| Process.kill(:KILL, pid) rescue nil }
      @children.each { |pid| Process.waitpid(pid) rescue nil }
      @children.clear
    end

    # -- 2. contention --

    def contention
      # Interleaved: for each hold and P, every contender in turn (order
      # rotated), so a noisy stretch of the machine hits them alike.
      plan = []
      (@opts.holds | @opts.peer_holds).each do |h|
        @opts.procs.each_with_index do |p, i|
          names = @opts.contenders.select { |n| n == "MegaMutex" ? @opts.holds.include?(h) : @opts.peer_holds.include?(h) }
          names.rotate(i).each { |n| plan << [n, p, h] }
        end
      end
      progress "contention: #{plan.size} runs of #{@opts.seconds} s (one key, P processes, hold = sleep)"
      runs = plan.map do |name, p, hold|
        GC.start
        results, requests = run_workers(name, p, @opts.seconds, key_for: ->(_) { "contended-#{name}-#{p}-#{hold}" }, hold: hold)
        row = contention_row(name, p, hold, results, requests)
        progress format("  %-9s P=%-2d hold %.0f ms: %7.0f acq/s (%3.0f %% of ideal), share %.2f..%.2f, wait p50 %.2f p99 %.1f ms, %.1f req/acq",
                        name, p, hold * 1000, row[:throughput], row[:efficiency] * 100, row[:min_share], row[:max_share],
                        row[:wait_p50_ms], row[:wait_p99_ms], row[:requests_per_acquisition] || 0)
        row
      end
      order = ->(r) { [r[:hold_ms], Contenders::NAMES.index(r[:contender]), r[:procs]] }
      { seconds: @opts.seconds, floor_cycle_us: @floor_us, runs: runs.sort_by(&order) }
    end

    def contention_row(name, procs, hold, results, requests)
      total = results.sum { |r| r[:count] }
      window = results.map { |r| r[:stop] }.max - results.map { |r| r[:start] }.min
      throughput = total / window
      ideal = 1.0 / (hold + @floor_us / 1e6)
      fair = total.fdiv(procs)
      waits = results.flat_map { |r| r[:waits] }
      hold_mean = Stats.mean(results.filter_map { |r| r[:hold_mean] }) || 0.0
      {
        contender: name, procs: procs, hold_ms: (hold * 1000).round(3), seconds: window.round(3),
        acquisitions: total, throughput: throughput.round(1), serial_ideal: ideal.round(1),
        efficiency: (throughput / ideal).round(4),
        efficiency_measured_hold: (throughput * (hold_mean + @floor_us / 1e6)).round(4),
        min_share: (results.map { |r| r[:count] }.min / fair).round(3),
        max_share: (results.map { |r| r[:count] }.max / fair).round(3),
        wait_p50_ms: (Stats.percentile(waits, 50) * 1000).round(3),
        wait_p99_ms: (Stats.percentile(waits, 99) * 1000).round(3),
        wait_max_ms: (waits.max * 1000).round(3),
        hold_mean_ms: (hold_mean * 1000).round(3),
        requests: requests,
        requests_per_acquisition: total.zero? ? nil : (requests.fdiv(total)).round(2),
        server: Contenders::SERVER[name].to_s,
        counts: results.map { |r| r[:count] }
      }
    end

    # -- 2b. threads of one process on one key --

    # 8 processes x 1 thread against 8 processes x 8 threads, all on one key
    # (hold 1 ms), alternating: what the server pays per acquisition when
    # each process has many threads waiting (the local queue: one of them
    # asks the server) against one waiter per process.
    THREAD_PROCS = 8
    THREADS = 8

    def threads_section
      return nil unless @opts.contenders.include?("MegaMutex")

      hold = 0.001
      progress "threads: #{THREAD_PROCS} processes x 1 thread vs x #{THREADS} threads, one key, hold 1 ms, " \
               "#{@opts.thread_rounds} rounds x #{@opts.thread_seconds} s"
      tries = { 1 => [], THREADS => [] }
      @opts.thread_rounds.times do |round|
        [1, THREADS].rotate(round).each do |t|
          GC.start
          results, requests = run_workers("MegaMutex", THREAD_PROCS, @opts.thread_seconds,
                                           key_for: ->(_) { "threads-#{t}-#{round}" }, hold: hold, threads: t)
          row = contention_row("MegaMutex", THREAD_PROCS, hold, results, requests)
          row[:threads] = t
          row[:thread_min_share] = thread_min_share(results, t)
          tries[t] << row
          progress format("  %d x %d: %7.0f acq/s, process share %.2f..%.2f, wait p99 %.1f ms, %.2f req/acq",
                          THREAD_PROCS, t, row[:throughput], row[:min_share], row[:max_share], row[:wait_p99_ms],
                          row[:requests_per_acquisition] || 0)
        end
      end
      rows = tries.transform_values do |list|
        best = list.sort_by { |r| r[:requests_per_acquisition] || Float::INFINITY }[list.size / 2] # the median run
        best.merge(rounds_requests_per_acquisition: list.map { |r| r[:requests_per_acquisition] })
      end
      one = Stats.median(rows[1][:rounds_requests_per_acquisition].compact)
      many = Stats.median(rows[THREADS][:rounds_requests_per_acquisition].compact)
      { procs: THREAD_PROCS, threads: THREADS, hold_ms: 1.0, seconds: @opts.thread_seconds, rounds: @opts.thread_rounds,
        runs: [rows[1], rows[THREADS]], requests_per_acquisition_1: one, requests_per_acquisition_many: many,
        ratio: one && many && one.positive? ? (many / one).round(3) : nil }
    end

    # The smallest share of one thread (of all threads of all processes).
    def thread_min_share(results, threads)
      counts = results.flat_map { |r| r[:thread_counts] || [r[:count]] }
      total = counts.sum
      return nil if total.zero?

      (counts.min / total.fdiv(counts.size)).round(3)
    end

    # -- 3. scaling --

    def scaling
      return { seconds: @opts.scale_seconds, runs: [] } unless @opts.contenders.include?("MegaMutex")

      progress "scaling: MegaMutex, P processes on distinct keys, #{@opts.scale_rounds} rounds x #{@opts.scale_seconds} s each"
      tries = Hash.new { |h, k| h[k] = [] }
      @opts.scale_rounds.times do |round|
        @opts.scale_procs.rotate(round).each do |p|
          GC.start
          results, requests = run_workers("MegaMutex", p, @opts.scale_seconds, key_for: ->(i) { "scale-#{p}-#{i}" }, hold: 0.0)
          total = results.sum { |r| r[:count] }
          window = results.map { |r| r[:stop] }.max - results.map { |r| r[:start] }.min
          tries[p] << { throughput: total / window, requests_per_acquisition: requests.fdiv(total) }
        end
        progress "  round #{round + 1}/#{@opts.scale_rounds}: " +
                 @opts.scale_procs.map { |p| format("P=%d %.0f acq/s", p, tries[p].last[:throughput]) }.join(", ")
      end
      runs = @opts.scale_procs.map do |p|
        tp = tries[p].map { |t| t[:throughput] }
        med = Stats.median(tp)
        { procs: p, throughput: med.round(1), per_process: (med / p).round(1), rounds_throughput: tp.map { |x| x.round(1) },
          requests_per_acquisition: Stats.median(tries[p].map { |t| t[:requests_per_acquisition] }).round(2) }
      end
      base = runs.first[:throughput]
      runs.each { |r| r[:speedup] = (r[:throughput] / base).round(2) }
      { seconds: @opts.scale_seconds, rounds: @opts.scale_rounds, hold_ms: 0, runs: runs }
    end

    # -- 4. waiting cost --

    # A holder process keeps a key; one waiter waits for it. The requests the
    # server sees meanwhile are all the waiter's (the holder renews only every
    # lock_ttl / 3).
    def waiting
      return nil unless @opts.contenders.include?("MegaMutex")

      progress "waiting cost: one waiter, key held #{@opts.wait_seconds} s"
      key = "waiting-#{Process.pid}"
      held_r, held_w = IO.pipe
      rel_r, rel_w = IO.pipe
      holder = fork do
        held_r.close
        rel_w.close
        Contenders.configure_megamutex(@memcached.address)
        MegaMutex.with_distributed_mutex(key) do
          held_w.write("h")
          held_w.close
          rel_r.read
        end
        exit!(0)
      rescue Exception # rubocop:disable Lint/RescueException
        exit!(1)
      end
      @children << holder
      held_w.close
      rel_r.close
      raise "the holder did not take the key" unless held_r.wait_readable(10) && held_r.read(1) == "h"

      # requests one failed attempt costs (measured: one try with timeout 0)
      before = mc_requests
      taken = MegaMutex::Lock.new(key, timeout: 0).try_lock
      per_attempt = mc_requests - before
      raise "the key was free while held" if taken

      go_r, go_w = IO.pipe
      out_r, out_w = IO.pipe
      waiter = fork do
        go_w.close
        out_r.close
        rel_w.close # else the holder never sees EOF on it
        held_r.close
        Contenders.configure_megamutex(@memcached.address)
        MegaMutex.with_distributed_mutex("warm-#{Process.pid}") {}
        go_r.read
        t = Bench.now
        MegaMutex.with_distributed_mutex(key) { out_w.write((Bench.now - t).to_s) }
        out_w.close
        exit!(0)
      rescue Exception # rubocop:disable Lint/RescueException
        exit!(1)
      end
      @children << waiter
      go_r.close
      out_w.close
      sleep 0.2 # the waiter connects and warms up
      s1 = mc_requests
      t1 = Bench.now
      go_w.close
      sleep @opts.wait_seconds
      s2 = mc_requests
      t2 = Bench.now
      rel_w.close # the holder releases
      waited = out_r.read.to_f
      [holder, waiter].each { |pid| Process.wait(pid) }
      @children -= [holder, waiter]
      window = t2 - t1
      rate = (s2 - s1) / window
      bmin = @ctx[:backoff_min]
      bmax = @ctx[:backoff_max]
      attempts = max_attempts(window, bmin, bmax)
      {
        held_seconds: window.round(3), waiter_waited_seconds: waited.round(3),
        requests: s2 - s1, requests_per_second: rate.round(1),
        requests_per_attempt: per_attempt,
        backoff_min: bmin, backoff_max: bmax,
        max_attempts_in_window: attempts,
        ceiling_requests_per_second: (per_attempt * attempts / window).round(1),
        steady_ceiling_requests_per_second: (per_attempt / (bmax / 2.0)).round(1),
        steady_mean_requests_per_second: (per_attempt / (0.75 * bmax)).round(1),
        model: "attempt, pause >= b/2 with b = backoff_min doubling to backoff_max; requests per attempt measured with one try_lock"
      }
    ensure
      [held_r, held_w, rel_r, rel_w, go_r, go_w, out_r, out_w].each { |io| io&.close unless io&.closed? }
    end

    # The most attempts a waiter can make in `window` seconds when every pause
    # is at its shortest (b/2; b starts at backoff_min and doubles to backoff_max).
    def max_attempts(window, bmin, bmax)
      t = 0.0
      b = bmin
      attempts = 1
      loop do
        t += b / 2
        break if t > window

        attempts += 1
        b = [b * 2, bmax].min
      end
      attempts
    end

    # -- results --

    def machine
      cpu = File.read("/proc/cpuinfo")[/^model name\s*:\s*(.+)$/, 1] rescue nil
      mc_version = `memcached -V 2>&1`.strip
      {
        nproc: Etc.nprocessors, cpu: cpu&.strip, kernel: `uname -r`.strip, os: os_name,
        ruby: RUBY_DESCRIPTION, memcached: mc_version[/\d+\.\d+\.\d+/] || mc_version,
        memcached_flags: (["-t", "2"] + @memcached.args).join(" "),
        libmemcached: `pkg-config --modversion libmemcached 2>/dev/null`.strip,
        redis: @redis&.version, mega_mutex: MegaMutex::VERSION,
        dalli: gem_version("dalli"), suo: gem_version("suo"), redlock: gem_version("redlock")
      }
    end

    def loadavg
      File.read("/proc/loadavg").split.first(3).join(" ")
    rescue StandardError
      nil
    end

    def os_name
      File.read("/etc/os-release")[/^PRETTY_NAME="?([^"\n]+)"?/, 1]
    rescue StandardError
      nil
    end

    def gem_version(name)
      Gem.loaded_specs[name]&.version&.to_s || Gem::Specification.find_by_name(name).version.to_s
    rescue StandardError
      nil
    end

    def assemble
      c = @cycle[:contenders]
      mm = c["MegaMutex"]
      peers = Contenders::PEERS.select { |n| c[n] }
      fastest = peers.min_by { |n| c[n][:median_us] }
      targets = []
      if mm
        targets << target("cycle: MegaMutex / floor", mm[:median_us] / c["floor"][:median_us], "<=", 1.25)
        if fastest
          targets << target("cycle: fastest peer (#{fastest}) / MegaMutex", c[fastest][:median_us] / mm[:median_us], ">=", 1.7)
        end
      end
      runs = @contention[:runs].select { |r| r[:hold_ms] == 1.0 }
      key_run = runs.find { |r| r[:contender] == "MegaMutex" && r[:procs] == 8 }
      if key_run
        targets << target("P=8 hold 1 ms: throughput / serial ideal", key_run[:efficiency], ">=", 0.85)
        targets << target("P=8 hold 1 ms: min share of fair", key_run[:min_share], ">=", 0.8)
        targets << target("P=8 hold 1 ms: p99 wait (ms)", key_run[:wait_p99_ms], "<=", 60)
        targets << target("P=8 hold 1 ms: server requests per acquisition", key_run[:requests_per_acquisition], "<=", 8)
      else
        @notes << "P=8 targets not evaluated: no MegaMutex run with P=8, hold 1 ms in this mode"
      end
      big = runs.find { |r| r[:contender] == "MegaMutex" && r[:procs] == 32 }
      big_peers = runs.select { |r| r[:procs] == 32 && Contenders::PEERS.include?(r[:contender]) }
      if big && !big_peers.empty?
        best = big_peers.max_by { |r| r[:throughput] }
        targets << target("P=32 hold 1 ms: throughput / best peer's (#{best[:contender]})", big[:throughput] / best[:throughput], ">=", 1.0)
        lowest = big_peers.min_by { |r| r[:wait_p99_ms] }
        targets << target("P=32 hold 1 ms: p99 wait / lowest peer p99 (#{lowest[:contender]})",
                          big[:wait_p99_ms] / lowest[:wait_p99_ms], "<", 1.0)
      else
        @notes << "P=32 targets not evaluated: no P=32 runs of MegaMutex and a peer in this mode (--procs 2,8,32)"
      end
      if @threads&.dig(:ratio)
        targets << target("#{@threads[:procs]} procs x #{@threads[:threads]} threads vs x 1: requests per acquisition",
                          @threads[:ratio], "<=", 1.2)
      end
      if @waiting
        targets << target("waiting: requests/s of one waiter vs ceiling", @waiting[:requests_per_second], "<=",
                          @waiting[:ceiling_requests_per_second])
      end
      {
        bench: "mega_mutex", version: 1, mode: @opts.mode,
        started_at: @started_wall.utc.iso8601, duration_seconds: @duration.round(1),
        machine: @machine,
        settings: {
          backoff_min: @ctx[:backoff_min], backoff_max: @ctx[:backoff_max], lock_ttl: @ctx[:lock_ttl],
          env_overrides: ENV.select { |k, _| k.start_with?("BENCH_") },
          rounds: @opts.rounds, cycles: @opts.cycles, contention_procs: @opts.procs,
          contention_holds_ms: @opts.holds.map { |h| h * 1000 }, peer_holds_ms: @opts.peer_holds.map { |h| h * 1000 },
          contention_seconds: @opts.seconds, scaling_procs: @opts.scale_procs, scaling_rounds: @opts.scale_rounds, scaling_seconds: @opts.scale_seconds,
          wait_seconds: @opts.wait_seconds, thread_rounds: @opts.thread_rounds, thread_seconds: @opts.thread_seconds,
          peer_waiting: "dalli: MegaMutex's backoff; suo: acquisition_delay = backoff_max; redlock: retry_delay = retry_jitter = backoff_max/2"
        },
        cycle: @cycle.merge(
          ratios: {
            megamutex_over_floor: mm && (mm[:median_us] / c["floor"][:median_us]).round(3),
            fastest_peer: fastest,
            fastest_peer_over_megamutex: mm && fastest && (c[fastest][:median_us] / mm[:median_us]).round(3)
          }
        ),
        contention: @contention, threads: @threads, scaling: @scaling, waiting: @waiting,
        targets: targets, notes: @notes
      }
    end

    def target(name, value, op, limit)
      pass = case op
             when "<=" then value <= limit
             when "<" then value < limit
             else value >= limit
             end
      { name: name, value: value.round(3), op: op, target: limit, pass: pass }
    end

    def plot(results)
      unless system("command -v gnuplot >/dev/null 2>&1")
        warn "bench: gnuplot not installed (bench/setup installs gnuplot-nox): no PNGs"
        return
      end
      c = results[:cycle][:contenders]
      File.open(File.join(@opts.out, "cycle.dat"), "w") do |f|
        f.puts "# contender median_us p99_us"
        c.each_value { |v| f.puts format("\"%s\" %.1f %.1f", v[:label], v[:median_us], v[:p99_us]) }
      end
      runs = results[:contention][:runs].select { |r| r[:hold_ms] == 1.0 }
      names = runs.map { |r| r[:contender] }.uniq
      procs = runs.map { |r| r[:procs] }.uniq.sort
      File.open(File.join(@opts.out, "contention.dat"), "w") do |f|
        f.puts "# hold 1 ms; acquisitions/s; columns: P serial_ideal #{names.join(' ')}"
        procs.each do |p|
          ideal = runs.find { |r| r[:procs] == p }[:serial_ideal]
          vals = names.map { |n| runs.find { |r| r[:procs] == p && r[:contender] == n }&.dig(:throughput) || "NaN" }
          f.puts([p, ideal, *vals].join(" "))
        end
      end
      titles = names.map { |n| Contenders::LABELS[n] }.join("|")
      ok = system("gnuplot", "-e", "resdir='#{@opts.out}'; series='#{titles}'", File.join(ROOT, "bench", "plot.gp"))
      warn "bench: gnuplot failed" unless ok
    end
  end

  # ---- the report ----------------------------------------------------------

  class Report
    def initialize(results)
      @r = results
    end

    def text
      lines = []
      m = @r[:machine]
      s = @r[:settings]
      lines << "MegaMutex benchmark (#{@r[:mode]}), #{@r[:started_at]}, #{@r[:duration_seconds]} s"
      lines << "machine: #{m[:nproc]} cores, #{m[:cpu]}, #{m[:os]}, kernel #{m[:kernel]}"
      lines << "         #{m[:ruby]}"
      lines << "         memcached #{m[:memcached]} (#{m[:memcached_flags]}), libmemcached #{m[:libmemcached]}, " \
               "redis #{m[:redis] || 'not installed'}"
      lines << "         load average (1/5/15 min) #{m[:loadavg_start]} at the start, #{m[:loadavg_end]} at the end"
      lines << "         mega_mutex #{m[:mega_mutex]}, dalli #{m[:dalli]}, suo #{m[:suo]}, redlock #{m[:redlock]}"
      lines << "settings: backoff_min #{ms(s[:backoff_min])}, backoff_max #{ms(s[:backoff_max])}, lock_ttl #{s[:lock_ttl]} s" \
               "#{s[:env_overrides].empty? ? '' : " (#{s[:env_overrides].map { |k, v| "#{k}=#{v}" }.join(' ')})"}"
      lines << "peers wait: #{s[:peer_waiting]}"
      @r[:notes].each { |n| lines << "NOTE: #{n}" }
      lines.concat(cycle_section, contention_section, threads_section, scaling_section, waiting_section, targets_section)
      lines.join("\n") + "\n"
    end

    private

    def ms(seconds)
      format("%g ms", seconds * 1000)
    end

    def cycle_section
      cy = @r[:cycle]
      lines = ["", "== 1. Uncontended cycle: µs per lock + empty block + unlock, one connection",
               "   #{cy[:rounds]} rounds x #{cy[:cycles]} cycles per contender, order rotated each round; " \
               "median = median of the round medians",
               "   req/cycle = requests the server counted per cycle (memcached: cmd_get + cmd_set + cmd_touch + deletes",
               "   + incr/decr, CAS already inside cmd_set; redis: requests sent, not the commands inside its Lua scripts)",
               format("   %-30s %9s %9s %9s %9s %13s  %s", "contender", "median", "mean", "p99", "min", "req/cycle", "round medians (min..max)")]
      cy[:contenders].each_value do |c|
        rm = c[:round_medians_us]
        lines << format("   %-30s %9.1f %9.1f %9.1f %9.1f %13s  %.0f..%.0f", c[:label], c[:median_us], c[:mean_us], c[:p99_us], c[:min_us],
                        "#{format('%.2f', c[:requests_per_cycle])}#{c[:server] == 'redis' ? ' (redis)' : ''}", rm.min, rm.max)
      end
      ra = cy[:ratios]
      if ra[:megamutex_over_floor]
        lines << format("   MegaMutex / floor = %.2f (target <= 1.25: %s)", ra[:megamutex_over_floor],
                        pass(ra[:megamutex_over_floor] <= 1.25))
      end
      if (cc = cy[:contenders]["MegaMutex C"]) && (mm = cy[:contenders]["MegaMutex"])
        lines << format("   where MegaMutex's cycle goes: %.1f µs the floor's two round trips, %+.1f µs the C part beyond them " \
                        "(owner check, read-back), %+.1f µs the Ruby layer", cy[:contenders]["floor"][:median_us],
                        cc[:median_us] - cy[:contenders]["floor"][:median_us], mm[:median_us] - cc[:median_us])
      end
      if ra[:fastest_peer_over_megamutex]
        lines << format("   fastest peer (%s) / MegaMutex = %.2f (target >= 1.7: %s)", ra[:fastest_peer],
                        ra[:fastest_peer_over_megamutex], pass(ra[:fastest_peer_over_megamutex] >= 1.7))
      end
      lines
    end

    def contention_section
      co = @r[:contention]
      lines = ["", "== 2. Contention: P processes on ONE key, each looping lock { sleep hold } for #{co[:seconds]} s, started together",
               format("   serial ideal = 1 / (hold + floor cycle %.1f µs); share = a process's acquisitions / (total / P);", co[:floor_cycle_us]),
               "   %real = the same against the hold measured inside the block (sleep overshoots);",
               "   wait = from calling lock to entering the block; req/acq = server requests / acquisitions",
               format("   %-10s %3s %5s %9s %9s %7s %6s %6s %6s %9s %9s %9s %8s", "contender", "P", "hold", "acq/s", "ideal",
                      "%ideal", "%real", "minsh", "maxsh", "wait p50", "wait p99", "wait max", "req/acq")]
      co[:runs].each do |r|
        lines << format("   %-10s %3d %3gms %9.0f %9.0f %6.1f%% %5.0f%% %6.2f %6.2f %7.2fms %7.1fms %7.1fms %8s",
                        r[:contender], r[:procs], r[:hold_ms], r[:throughput], r[:serial_ideal], r[:efficiency] * 100,
                        r[:efficiency_measured_hold] * 100,
                        r[:min_share], r[:max_share], r[:wait_p50_ms], r[:wait_p99_ms], r[:wait_max_ms],
                        r[:requests_per_acquisition] ? format("%.2f%s", r[:requests_per_acquisition], r[:server] == "redis" ? "r" : "") : "-")
      end
      lines << "   (r: redis requests (EVALSHA; commands inside the Lua scripts not counted); the others: memcached requests. Measured hold = sleep(0.001) took " \
               "#{co[:runs].select { |r| r[:hold_ms] == 1.0 }.map { |r| r[:hold_mean_ms] }.then { |v| v.empty? ? '-' : format('%.2f', v.sum / v.size) }} ms on average)"
      lines
    end

    def threads_section
      th = @r[:threads]
      return ["", "== 2b. Threads: (MegaMutex not run)"] unless th

      lines = ["", "== 2b. Threads: #{th[:procs]} processes on ONE key, 1 thread each vs #{th[:threads]} threads each, hold 1 ms, " \
                   "#{th[:seconds]} s per run, #{th[:rounds]} alternating rounds (the median run by req/acq)",
               "   thread minsh = the smallest share of one thread among all threads of all processes",
               format("   %-14s %9s %6s %6s %6s %12s %9s %9s %8s  %s", "procs x thr", "acq/s", "%real", "minsh", "maxsh",
                      "thread minsh", "wait p50", "wait p99", "req/acq", "rounds (req/acq)")]
      th[:runs].each do |r|
        lines << format("   %-14s %9.0f %5.0f%% %6.2f %6.2f %12s %7.2fms %7.1fms %8.2f  %s", "#{r[:procs]} x #{r[:threads]}",
                        r[:throughput], r[:efficiency_measured_hold] * 100, r[:min_share], r[:max_share],
                        r[:thread_min_share].to_s, r[:wait_p50_ms], r[:wait_p99_ms], r[:requests_per_acquisition] || 0,
                        r[:rounds_requests_per_acquisition].join(" "))
      end
      lines << format("   requests per acquisition, x %d threads / x 1 thread = %s (target <= 1.2: %s)", th[:threads],
                      th[:ratio].to_s, th[:ratio] ? pass(th[:ratio] <= 1.2) : "-")
      lines
    end

    def scaling_section
      sc = @r[:scaling]
      lines = ["", "== 3. Scaling: MegaMutex, P processes on DISTINCT keys, hold 0, #{sc[:seconds]} s per run, " \
                   "#{sc[:rounds]} alternating rounds (median)",
               format("   %3s %12s %12s %9s %8s  %s", "P", "acq/s total", "per process", "x P=1", "req/acq", "rounds (acq/s)")]
      sc[:runs].each do |r|
        lines << format("   %3d %12.0f %12.0f %9.2f %8.2f  %s", r[:procs], r[:throughput], r[:per_process], r[:speedup],
                        r[:requests_per_acquisition], r[:rounds_throughput].map { |x| x.round.to_s }.join(" "))
      end
      lines
    end

    def waiting_section
      w = @r[:waiting]
      return ["", "== 4. Waiting cost: (MegaMutex not run)"] unless w

      ["", "== 4. Waiting cost: one process holds a key #{w[:held_seconds]} s while one waiter waits",
       format("   the waiter sent %d requests: %.1f requests/s (it waited %.2f s in all)", w[:requests], w[:requests_per_second],
              w[:waiter_waited_seconds]),
       format("   one attempt = %d requests (measured); backoff %s doubling to %s, pauses in [b/2, b]", w[:requests_per_attempt],
              ms(w[:backoff_min]), ms(w[:backoff_max])),
       format("   ceiling over this window (every pause at its shortest, ramp-up included): %.1f requests/s (%d attempts)",
              w[:ceiling_requests_per_second], w[:max_attempts_in_window]),
       format("   steady state: at most %.1f requests/s (%d / (backoff_max/2)), %.1f on average (%d / (0.75 backoff_max))",
              w[:steady_ceiling_requests_per_second], w[:requests_per_attempt], w[:steady_mean_requests_per_second],
              w[:requests_per_attempt]),
       "   #{pass(w[:requests_per_second] <= w[:ceiling_requests_per_second])}: measured <= ceiling"]
    end

    def targets_section
      lines = ["", "== Targets"]
      @r[:targets].each do |t|
        lines << format("   %-4s %-66s %10.3f %-2s %g", t[:pass] ? "PASS" : "MISS", t[:name], t[:value], t[:op], t[:target])
      end
      lines << "   (none evaluated in this mode)" if @r[:targets].empty?
      lines
    end

    def pass(ok)
      ok ? "PASS" : "MISS"
    end
  end
end

if $PROGRAM_NAME == __FILE__
  opts = Bench.parse_options(ARGV)
  code = begin
    Bench::Runner.new(opts).run
  rescue Interrupt, SignalException
    warn "bench: interrupted; servers and workers stopped"
    130
  end
  exit code
end
