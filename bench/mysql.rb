# frozen_string_literal: true

# backend :mysql (MariaDB named locks) against with_advisory_lock 5.3 (over
# ActiveRecord 7.2 + trilogy) on the SAME private mariadbd, beside MegaMutex
# :memcached on the same machine (issue #11):
#
#   bundle exec ruby bench/mysql.rb            # full: 1.5 to 2 minutes (the last part of rake bench)
#   bundle exec ruby bench/mysql.rb --smoke    # tiny sizes (spec/bench_spec.rb)
#   bundle exec ruby bench/mysql.rb --help
#
# 1. The uncontended cycle: lock, empty block, unlock, one thread, over TCP
#    and over the unix socket; rounds of cycles, contenders in turn (order
#    rotated each round); median of the round medians, p99 of every cycle.
#    The C floor in MARIADB_NOTES.md: GET_LOCK + RELEASE_LOCK 72-75 µs
#    (socket), 98-108 µs (TCP).
# 2. The handoff: 4 processes take one lock in turn (empty block), started
#    together; the handoff is the time from one holder leaving its block to
#    the next one, in another process, entering its block (both stamped with
#    CLOCK_MONOTONIC, which all the processes share): the release, the server
#    (or the poller) finding the waiter, and the waiter's return to Ruby.
#    MARIADB_NOTES.md: 172 µs median (socket), 248 µs (TCP), from C with 8
#    waiters.
# 3. Contention: P processes (8) on one key, each looping lock { sleep 1 ms }
#    for a few seconds, started together: acquisitions/s, each process's
#    share of them, the wait from calling lock to entering the block, and the
#    statements the server ran per acquisition (its Questions counter).
#
# It starts its own mariadbd (the suite's Servers::MariaDB: free port, unix
# socket in a temporary directory) and memcached (-M), and stops them and
# every worker when it ends. Results: bench/results/mysql.txt, mysql.json
# (ruby bench/readme_tables.rb prints the README rows from them).
begin
  require "bundler/setup"
rescue LoadError
  nil
end
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))

require "optparse"
require "json"
require "time"
require "fileutils"
require "etc"
require "mega_mutex"
require_relative "../spec/support/servers"
require_relative "mysql_contenders"
require_relative "workers"
require_relative "mysql_report"

module Bench
  module MySQLBench
    ROOT = File.expand_path("..", __dir__)
    HANDOFF_WORKERS = 4
    HOLD = 0.001
    MODES = {
      "full" => { rounds: 10, cycles: 500, handoffs: 2000, procs: 8, seconds: 5.0 },
      # for spec/bench_spec.rb: every contender and every section, tiny sizes (4 processes, not 8)
      "smoke" => { rounds: 2, cycles: 50, handoffs: 80, procs: 4, seconds: 0.3 }
    }.freeze
    Options = Struct.new(:mode, :rounds, :cycles, :handoffs, :procs, :seconds, :contenders, :out, keyword_init: true)

    def self.parse_options(argv)
      mode = "full"
      given = {}
      contenders = nil
      out = File.join(ROOT, "bench", "results")
      OptionParser.new do |p|
        p.banner = "Usage: bundle exec ruby bench/mysql.rb [options]"
        p.on("--smoke", "tiny run that only checks every section works (the spec's)") { mode = "smoke" }
        p.on("--rounds N", Integer, "rounds of uncontended cycles, contenders in turn") { |v| given[:rounds] = v }
        p.on("--cycles N", Integer, "cycles per contender per round") { |v| given[:cycles] = v }
        p.on("--handoffs N", Integer, "lock cycles of the #{HANDOFF_WORKERS} handoff processes in all") { |v| given[:handoffs] = v }
        p.on("--procs P", Integer, "contention processes (0: no contention section)") { |v| given[:procs] = v }
        p.on("--seconds S", Float, "seconds per contention run") { |v| given[:seconds] = v }
        p.on("--contenders LIST", Array, "subset of #{MySQLContenders::NAMES.join(',')}") { |v| contenders = v }
        p.on("--out DIR", "where mysql.txt and mysql.json go (default bench/results)") { |v| out = File.expand_path(v) }
        p.on("-h", "--help", "this help") do
          puts p
          exit 0
        end
      end.parse!(argv)
      raise OptionParser::InvalidArgument, argv.join(" ") unless argv.empty?

      bad = (contenders || []) - MySQLContenders::NAMES
      raise OptionParser::InvalidArgument, "--contenders #{bad.join(',')}" unless bad.empty?

      opts = Options.new(**MODES.fetch(mode).merge(given), mode: mode, out: out,
                                                            contenders: contenders || MySQLContenders::NAMES.dup)
      { rounds: 1, cycles: 1, handoffs: HANDOFF_WORKERS * 2, seconds: 0.05 }.each do |k, min|
        raise OptionParser::InvalidArgument, "--#{k} #{opts[k]} (at least #{min})" if opts[k] < min
      end
      raise OptionParser::InvalidArgument, "--procs #{opts.procs} (0, or at least 2)" if opts.procs == 1 || opts.procs.negative?

      opts
    end

    def self.now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def self.percentile(values, pct)
      return nil if values.empty?

      sorted = values.sort
      sorted[((sorted.size - 1) * pct / 100.0).round]
    end

    def self.median(values)
      percentile(values, 50)
    end

    def self.r(value, digits = 1)
      value&.round(digits)
    end

    class Runner
      def initialize(opts)
        @opts = opts
        @children = []
        @notes = []
        @started = MySQLBench.now
        @started_wall = Time.now.utc
      end

      def run
        unless Servers::MariaDB.available?
          warn "bench/mysql.rb: SKIPPED: mariadbd or the mariadb client is not installed (bin/setup installs mariadb-server)"
          return 0
        end
        FileUtils.mkdir_p(@opts.out)
        unless MegaMutex::Native::Client::MYSQL
          @notes << "MegaMutex :mysql SKIPPED: the extension was built without libmariadb " \
                    "(apt-get install libmariadb-dev, then rm -rf tmp && bundle exec rake compile)"
          warn "bench/mysql.rb: #{@notes.last}"
          @opts.contenders -= %w[mysql-tcp mysql-socket]
        end
        peers = @opts.contenders.reject { |n| n.start_with?("mysql-", "memcached") }
        if !peers.empty? && !MySQLContenders.load_peers
          @notes << "with_advisory_lock and AR GET_LOCK SKIPPED: #{MySQLContenders.missing}"
          warn "bench/mysql.rb: #{@notes.last}"
          @opts.contenders -= peers
        end
        raise "bench/mysql.rb: nothing left to run (#{@notes.join('; ')})" if @opts.contenders.empty?

        @db = Servers::MariaDB.new.start
        @mc = Servers::Memcached.new(args: %w[-M -m 64]).start
        @servers = { tcp: ["127.0.0.1", @db.port], socket: @db.socket_path, mysql_url: @db.url,
                     mysql_socket_url: @db.socket_url, memcached: @mc.address }
        @questions_overhead = questions_overhead
        @machine = machine
        progress "MegaMutex :mysql bench (#{@opts.mode}) on mariadbd #{@machine[:mariadb]} 127.0.0.1:#{@db.port} " \
                 "and #{@db.socket_path}; contenders #{@opts.contenders.join(', ')}"
        @cycle = cycle_section
        @handoff = handoff_section
        @contention = @opts.procs.zero? ? nil : contention_section
        @machine[:loadavg_end] = loadavg
        results = assemble
        text = Report.new(results).text
        File.write(File.join(@opts.out, "mysql.txt"), text)
        File.write(File.join(@opts.out, "mysql.json"), JSON.pretty_generate(results) + "\n")
        puts text
        0
      ensure
        kill_children
        MegaMutex.reset_configuration!
        @mc&.stop
        @db&.stop
      end

      private

      def progress(msg)
        $stderr.puts format("[%6.1f s] %s", MySQLBench.now - @started, msg)
      end

      # -- server counters --

      # Statements the server has run (SHOW GLOBAL STATUS Questions): read
      # with the mariadb client, whose own statements are taken off.
      def questions
        @db.sql("SHOW GLOBAL STATUS LIKE 'Questions'").dig(0, 1).to_i - (@questions_overhead || 0)
      end

      def questions_overhead
        a = questions
        b = questions
        b - a
      end

      def requests(name)
        if MySQLContenders::SERVER[name] == :memcached
          st = @mc.stats
          %w[cmd_get cmd_set cmd_touch delete_hits delete_misses incr_hits incr_misses].sum { |k| st[k].to_i }
        else
          questions
        end
      end

      # -- 1. uncontended cycle --

      def cycle_section
        names = @opts.contenders
        samples = names.to_h { |n| [n, []] }
        medians = names.to_h { |n| [n, []] }
        per_cycle = names.to_h { |n| [n, []] }
        progress "uncontended cycle: #{@opts.rounds} rounds x #{@opts.cycles} cycles, in turn: #{names.join(', ')}"
        @opts.rounds.times do |round|
          names.rotate(round % names.size).each do |name|
            lock = MySQLContenders.build(name, @servers) # MegaMutex: one configuration at a time
            key = "cycle-#{name}"
            20.times { lock.synchronize(key) {} }
            GC.start
            before = requests(name)
            times = Array.new(@opts.cycles) do
              t = MySQLBench.now
              lock.synchronize(key) {}
              (MySQLBench.now - t) * 1e6
            end
            per_cycle[name] << (requests(name) - before).fdiv(@opts.cycles)
            samples[name].concat(times)
            medians[name] << MySQLBench.median(times)
          end
          progress format("  round %d/%d: %s", round + 1, @opts.rounds,
                          names.map { |n| format("%s %.0f", n, medians[n].last) }.join(", "))
        end
        rows = names.to_h do |n|
          [n, { label: MySQLContenders::LABELS[n], server: MySQLContenders::SERVER[n].to_s,
                median_us: MySQLBench.r(MySQLBench.median(medians[n])), p99_us: MySQLBench.r(MySQLBench.percentile(samples[n], 99)),
                min_us: MySQLBench.r(samples[n].min), round_medians_us: medians[n].map { |x| x.round(1) },
                requests_per_cycle: MySQLBench.r(MySQLBench.median(per_cycle[n]), 2) }]
        end
        { rounds: @opts.rounds, cycles: @opts.cycles, contenders: rows }
      end

      # -- worker processes --

      # Runs `count` workers (bench/workers.rb) that each run the block with
      # their lock; returns each worker's result and the requests the server
      # counted meanwhile.
      def workers(name, count)
        results, before, after = BenchWorkers.run(name, count, build: -> { MySQLContenders.build(name, @servers) },
                                                               children: @children, measure: -> { requests(name) }) { |lock, _| yield(lock) }
        [results, after - before]
      end

      def kill_children
        @children.each { |pid| Process.kill(:KILL, pid) rescue nil }
        @children.each { |pid| Process.waitpid(pid) rescue nil }
        @children.clear
      end

      # -- 2. handoff --

      def handoff_section
        per_worker = @opts.handoffs / HANDOFF_WORKERS
        progress "handoff: #{HANDOFF_WORKERS} processes x #{per_worker} cycles on one key, each contender in turn"
        rows = @opts.contenders.to_h do |name|
          GC.start
          key = "handoff-#{name}-#{Process.pid}"
          results, = workers(name, HANDOFF_WORKERS) do |lock|
            Array.new(per_worker) do
              lock.synchronize(key) do
                entered = MySQLBench.now
                [entered, MySQLBench.now, Process.pid]
              end
            end
          end
          stamps = results.flatten(1).sort_by(&:first)
          # Only a lock passing to another process is a handoff (a holder
          # that takes it straight back waited for nobody).
          pairs = stamps.each_cons(2).reject { |(_, _, a), (_, _, b)| a == b }
          gaps = pairs.map { |(_, left, _), (entered, _, _)| (entered - left) * 1e6 }
          row = { label: MySQLContenders::LABELS[name], median_us: MySQLBench.r(MySQLBench.median(gaps)),
                  p99_us: MySQLBench.r(MySQLBench.percentile(gaps, 99)), max_us: MySQLBench.r(gaps.max),
                  turns: gaps.size, cycles: stamps.size }
          progress format("  %-13s median %s µs, p99 %s µs (%d of %d cycles passed it to another process)", name,
                          row[:median_us] || "-", row[:p99_us] || "-", row[:turns], row[:cycles])
          [name, row]
        end
        { workers: HANDOFF_WORKERS, cycles_per_worker: per_worker, contenders: rows }
      end

      # -- 3. contention --

      def contention_section
        progress "contention: #{@opts.procs} processes on one key, hold #{(HOLD * 1000).round} ms, #{@opts.seconds} s each"
        rows = @opts.contenders.to_h do |name|
          GC.start
          key = "contended-#{name}-#{Process.pid}"
          seconds = @opts.seconds
          results, reqs = workers(name, @opts.procs) { |lock| contend(lock, key, seconds) }
          row = contention_row(name, results, reqs)
          progress format("  %-13s %6.0f acq/s, share %.2f..%.2f, wait p50 %.2f p99 %.1f ms, %.1f req/acq", name,
                          row[:throughput], row[:min_share], row[:max_share], row[:wait_p50_ms] || 0, row[:wait_p99_ms] || 0,
                          row[:requests_per_acquisition] || 0)
          [name, row]
        end
        { procs: @opts.procs, hold_ms: HOLD * 1000, seconds: @opts.seconds, contenders: rows }
      end

      def contend(lock, key, seconds)
        waits = []
        count = 0
        t0 = MySQLBench.now
        deadline = t0 + seconds
        while (t = MySQLBench.now) < deadline
          lock.synchronize(key) do
            waits << MySQLBench.now - t
            sleep HOLD
          end
          count += 1
        end
        { count: count, start: t0, stop: MySQLBench.now, waits: waits }
      end

      def contention_row(name, results, reqs)
        total = results.sum { |x| x[:count] }
        window = results.map { |x| x[:stop] }.max - results.map { |x| x[:start] }.min
        fair = total.fdiv(results.size)
        waits = results.flat_map { |x| x[:waits] }.map { |w| w * 1000 }
        counts = results.map { |x| x[:count] }
        { label: MySQLContenders::LABELS[name], server: MySQLContenders::SERVER[name].to_s, seconds: window.round(3),
          acquisitions: total, throughput: MySQLBench.r(total / window),
          min_share: fair.zero? ? 0.0 : (counts.min / fair).round(3), max_share: fair.zero? ? 0.0 : (counts.max / fair).round(3),
          wait_p50_ms: MySQLBench.r(MySQLBench.percentile(waits, 50), 3), wait_p99_ms: MySQLBench.r(MySQLBench.percentile(waits, 99), 2),
          wait_max_ms: MySQLBench.r(waits.max, 2), requests: reqs,
          requests_per_acquisition: total.zero? ? nil : reqs.fdiv(total).round(2), counts: counts }
      end

      # -- results --

      def ratios
        MySQLContenders::PAIRS.filter_map do |mm, peer|
          next unless @opts.contenders.include?(mm) && @opts.contenders.include?(peer)

          c = @cycle[:contenders]
          h = @handoff[:contenders]
          k = @contention&.dig(:contenders)
          { megamutex: mm, peer: peer,
            cycle_median: quotient(c[mm][:median_us], c[peer][:median_us]),
            handoff_median: quotient(h[mm][:median_us], h[peer][:median_us]),
            handoff_turns: [h[mm][:turns], h[peer][:turns]], handoff_cycles: h[mm][:cycles],
            contention_throughput: k && quotient(k[mm][:throughput], k[peer][:throughput]),
            contention_wait_p50: k && quotient(k[mm][:wait_p50_ms], k[peer][:wait_p50_ms]),
            contention_wait_p99: k && quotient(k[mm][:wait_p99_ms], k[peer][:wait_p99_ms]),
            contention_min_share: k && [k[mm][:min_share], k[peer][:min_share]] }
        end
      end

      def quotient(a, b)
        a && b && b.positive? ? (a / b).round(3) : nil
      end

      def assemble
        { bench: "mega_mutex mysql", version: 1, mode: @opts.mode, started_at: @started_wall.iso8601,
          duration_seconds: (MySQLBench.now - @started).round(1), machine: @machine,
          settings: { rounds: @opts.rounds, cycles: @opts.cycles, handoffs: @opts.handoffs, procs: @opts.procs,
                      seconds: @opts.seconds, hold_ms: HOLD * 1000, timeout: MySQLContenders::TIMEOUT,
                      waiting: "MegaMutex :mysql: GET_LOCK waits in the server; with_advisory_lock 5.3: GET_LOCK(name, 0), " \
                               "then sleep rand(0.05..0.15) s and again; AR GET_LOCK: GET_LOCK(name, 60) waits in the server; " \
                               "MegaMutex :memcached: polls with its backoff" },
          cycle: @cycle, handoff: @handoff, contention: @contention, ratios: ratios, notes: @notes }
      end

      def machine
        cpu = File.read("/proc/cpuinfo")[/^model name\s*:\s*(.+)$/, 1] rescue nil
        { nproc: Etc.nprocessors, cpu: cpu&.strip, kernel: `uname -r`.strip, ruby: RUBY_DESCRIPTION,
          mariadb: @db.sql("SELECT VERSION()").dig(0, 0), mariadb_flags: "--skip-grant-tables #{Servers::MariaDB::FLAGS.join(' ')}",
          memcached: `memcached -V 2>&1`.strip[/\d+\.\d+\.\d+/], mega_mutex: MegaMutex::VERSION,
          activerecord: gem_version("activerecord"), trilogy: gem_version("trilogy"),
          with_advisory_lock: gem_version("with_advisory_lock"), loadavg_start: loadavg }
      end

      def loadavg
        File.read("/proc/loadavg").split.first(3).join(" ")
      rescue StandardError
        nil
      end

      def gem_version(name)
        Gem.loaded_specs[name]&.version&.to_s
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  code = begin
    Bench::MySQLBench::Runner.new(Bench::MySQLBench.parse_options(ARGV)).run
  rescue OptionParser::ParseError => e
    warn "bench/mysql.rb: #{e.message}"
    2
  rescue Interrupt, SignalException
    warn "bench/mysql.rb: interrupted; servers and workers stopped"
    130
  end
  exit code
end
