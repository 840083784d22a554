# frozen_string_literal: true

# Chaos for the :quorum backend: N worker processes hammer one lock held on
# a majority of 3 memcached servers (-M), each section logged with its
# entry and exit (CLOCK_MONOTONIC, one clock for all processes) and its
# fencing token, while a driver breaks one server at a time, again and
# again: kill -9 and restart empty, flush_all, SIGSTOP for shorter or longer than
# the lease. Between two faults it waits until the broken server counts
# again (a restarted or flushed server counts only after quorum_max_ttl +
# 5 s), so a majority lives throughout. Then it checks:
#   - no two sections overlap (whatever the faults: a majority always lived);
#   - fencing tokens strictly increase in section order;
#   - locking went on: sections completed during the faults.
#
#   ruby -Ilib chaos/quorum.rb --quick     # ~40 s; rake chaos:quorum runs the full one
#   ruby -Ilib chaos/quorum.rb --help
#
# Exit status 0 when all three hold, 1 otherwise.

require "optparse"
require "json"
require "tmpdir"
require "fileutils"
require "mega_mutex"
require_relative "../spec/support/quorum_servers"

module QuorumChaos
  MUTEX_ID = "chaos-quorum"
  FAULTS = %i[restart flush short_pause long_pause].freeze

  Options = Struct.new(:procs, :rounds, :ttl, :hold_ms, :io_timeout, :seed, :json, :lock, keyword_init: true)

  def self.now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def self.parse(argv)
    o = Options.new(procs: 4, rounds: 2, ttl: 1, hold_ms: 10.0, io_timeout: 0.3, seed: Random.new_seed % 1_000_000,
                    lock: true)
    OptionParser.new do |p|
      p.banner = "Usage: ruby -Ilib chaos/quorum.rb [options]   (or: bundle exec rake chaos:quorum CHAOS_ARGS=\"...\")"
      p.on("--quick", "one round of the four faults (~40 s)") { o.rounds = 1 }
      p.on("--rounds N", Integer, "rounds of the four faults (restart, flush, short and long pause) (default 2)") { |v| o.rounds = v }
      p.on("--procs N", Integer, "worker processes (default 4)") { |v| o.procs = v }
      p.on("--ttl S", Integer, "lock_ttl and quorum_max_ttl (default 1)") { |v| o.ttl = v }
      p.on("--hold-ms MS", Float, "a section sleeps rand(0..MS) ms (default 10)") { |v| o.hold_ms = v }
      p.on("--io-timeout S", Float, "io_timeout and connect_timeout (default 0.3)") { |v| o.io_timeout = v }
      p.on("--seed N", Integer, "seed of the driver's choices") { |v| o.seed = v }
      p.on("--json PATH", "also write the results as JSON") { |v| o.json = v }
      p.on("--no-lock", "sections WITHOUT the mutex (token 0): shows that the checker finds overlaps") { o.lock = false }
      p.on("-h", "--help") do
        puts p
        exit 0
      end
    end.parse!(argv)
    o
  end

  # One worker process: sections until told to stop, each logged as
  # "S enter exit token" in one write(2); errors counted as "C class".
  def self.worker(dir, servers, opts, stop_file)
    MegaMutex.reset_configuration!
    MegaMutex.configure do |c|
      c.backend = :quorum
      c.memcache_servers = servers
      c.lock_ttl = opts.ttl
      c.quorum_max_ttl = opts.ttl
      c.io_timeout = opts.io_timeout
      c.connect_timeout = opts.io_timeout
      c.namespace = "chaos"
      c.on_lock_lost = :raise
    end
    log = File.open(File.join(dir, "w#{Process.pid}.log"), File::WRONLY | File::APPEND | File::CREAT)
    rng = Random.new(opts.seed + Process.pid)
    until File.exist?(stop_file)
      section = lambda do |token|
        enter = now
        sleep(rng.rand * opts.hold_ms / 1000.0)
        log.syswrite(format("S %.6f %.6f %d %d\n", enter, now, token, Process.pid))
      end
      begin
        if opts.lock
          MegaMutex.with_distributed_mutex(MUTEX_ID, timeout: 10) { |lock| section.call(lock.fencing_token) }
        else
          section.call(0)
        end
      rescue MegaMutex::Error => e
        log.syswrite("C #{e.class.name.split('::').last} #{format('%.6f', now)}\n")
        sleep 0.01
      end
    end
    exit!(0)
  rescue Exception => e # rubocop:disable Lint/RescueException
    log&.syswrite("Z #{e.class}: #{e.message.tr("\n", ' ')}\n")
    exit!(1)
  end

  def self.run(opts)
    rng = Random.new(opts.seed)
    dir = Dir.mktmpdir("mm-quorum-chaos")
    stop_file = File.join(dir, "stop")
    started = now
    servers = QuorumServers.start_sets(1, 3).first
    addresses = servers.map(&:address)
    mature = now
    workers = Array.new(opts.procs) { fork { worker(dir, addresses, opts, stop_file) } }
    faults = []
    sleep 1
    opts.rounds.times do
      FAULTS.shuffle(random: rng).each do |kind|
        victim = servers.sample(random: rng)
        at = now
        case kind
        when :restart then victim.restart
        when :flush then victim.flush_all
        when :short_pause, :long_pause
          victim.pause
          sleep(kind == :short_pause ? opts.ttl * 0.5 : opts.ttl * 2.5 + 1)
          victim.resume
        end
        QuorumServers.wait_mature(victim, timeout: 60) # it counts again: the next fault may come
        faults << { kind: kind, server: victim.address, at: at - started, until: now - started }
        sleep 0.5
      end
    end
    sleep 1
    FileUtils.touch(stop_file)
    statuses = workers.map { |pid| Process.wait2(pid).last }
    results = check(dir, started, mature, faults, statuses, opts)
    results
  ensure
    servers&.each(&:stop)
    FileUtils.rm_rf(dir) if dir && results && results[:pass]
  end

  def self.check(dir, started, mature, faults, statuses, opts)
    sections = []
    errors = Hash.new(0)
    crashes = []
    Dir[File.join(dir, "w*.log")].each do |path|
      File.foreach(path) do |line|
        kind, *rest = line.split
        case kind
        when "S" then sections << { enter: Float(rest[0]), exit: Float(rest[1]), token: Integer(rest[2]), pid: Integer(rest[3]) }
        when "C" then errors[rest[0]] += 1
        when "Z" then crashes << line.strip
        end
      end
    end
    sections.sort_by! { |s| s[:enter] }
    overlaps = 0
    last_exit = -Float::INFINITY
    sections.each do |s|
      overlaps += 1 if s[:enter] < last_exit
      last_exit = [last_exit, s[:exit]].max
    end
    backwards = sections.each_cons(2).count { |a, b| b[:token] <= a[:token] }
    # Sections entered while one server was down, paused, or not counting yet.
    windows = faults.map { |f| (started + f[:at])..(started + f[:until]) }
    during = sections.count { |s| windows.any? { |w| w.cover?(s[:enter]) } }
    {
      pass: overlaps.zero? && backwards.zero? && crashes.empty? && statuses.all?(&:success?) && during.positive?,
      sections: sections.size, sections_during_faults: during, overlaps: overlaps, tokens_not_increasing: backwards,
      faults: faults.map { |f| f[:kind] }.tally, errors: errors, crashes: crashes,
      wall: (now - started).round(1), setup: (mature - started).round(1),
      settings: { procs: opts.procs, ttl: opts.ttl, rounds: opts.rounds, io_timeout: opts.io_timeout, seed: opts.seed }
    }
  end

  def self.report(r)
    puts format("MegaMutex quorum chaos: 3 memcached (-M), %<procs>d procs, lock_ttl = quorum_max_ttl = %<ttl>d s, " \
                "io_timeout %<io_timeout>s s, %<rounds>d round(s), seed %<seed>d", r[:settings])
    puts
    rows = [
      ["faults (restart / flush / short pause / long pause)",
       FAULTS.map { |k| r[:faults].fetch(k, 0) }.join(" / ")],
      ["sections completed (with one server out)", "#{r[:sections]} (#{r[:sections_during_faults]})"],
      ["OVERLAPPING SECTIONS", r[:overlaps]],
      ["TOKENS NOT INCREASING (in section order)", r[:tokens_not_increasing]],
      ["errors retried (#{r[:errors].keys.sort.join(', ')})", r[:errors].values.sum],
      ["worker crashes", r[:crashes].size],
      ["wall time (servers aged before the run)", "#{r[:wall]} s (#{r[:setup]} s)"]
    ]
    rows.each { |label, value| puts format("%-52s %s", label, value) }
    puts
    puts(r[:pass] ? "PASS: 0 overlapping sections, tokens strictly increasing, locking went on through the faults" : "FAIL")
    r[:crashes].first(5).each { |c| puts "  #{c}" }
  end
end

if $PROGRAM_NAME == __FILE__
  opts = QuorumChaos.parse(ARGV)
  results = QuorumChaos.run(opts)
  QuorumChaos.report(results)
  File.write(opts.json, JSON.pretty_generate(results)) if opts.json
  exit(results[:pass] ? 0 : 1)
end
