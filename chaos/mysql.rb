# frozen_string_literal: true

# Chaos for the :mysql backend (MariaDB named locks, the session is the
# lease): N worker processes hammer one lock on a private mariadbd, each
# section logged with its entry and exit (CLOCK_MONOTONIC, one clock for
# all processes), while a driver breaks things in three scenarios:
#
#   kill    kill -9 a worker, mostly one inside its section: the server drops
#           its session and the lock is free at once (figure: kill to the next
#           entry by anyone, median and max); no overlap allowed.
#   pause   SIGSTOP a holder inside its section, shorter than the lease
#           (no overlap allowed) and longer (the server drops the silent
#           session after wait_timeout = lock_ttl + 2 s; others enter;
#           the holder must be told, LockLostError after its block); and a
#           waiter (a worker outside its section) stopped longer than the
#           lease: granted while stopped, its session dropped, it enters late
#           when it resumes, while another holds the lock - and must be told.
#   server  mariadbd killed with kill -9 and restarted, and shut down cleanly
#           (SIGTERM) and restarted, on the same port and socket, each while
#           a worker is inside its section: the holder must be told, no
#           overlap outside the restart's window, locking goes on after it.
#
#   ruby -Ilib chaos/mysql.rb --quick     # ~40 s; rake chaos:mysql runs the full one
#   ruby -Ilib chaos/mysql.rb --help
#
# The workers, their logs and the log checks are chaos/run.rb's (required,
# not copied); the faults and the verdict are this file's, the report is
# chaos/support/mysql_report.rb's.
# Exit status 1 on a violation (see --help).

require_relative "run"
require_relative "support/mysql_report"

module MysqlChaos
  # What the store adds to lock_ttl for the session's wait_timeout
  # (WAIT_MARGIN in ext/mega_mutex/mariadb_session.h): the lease.
  WAIT_MARGIN = 2
  SCENARIOS = %w[kill pause server].freeze

  Options = Struct.new(:quick, :scenarios, :procs, :sections, :hold_ms, :ttl, :io_timeout, :lock, :kill_every,
                       :kill_in_section, :min_kills, :crashes, :shutdowns, :short_pauses, :long_pauses, :waiter_pauses,
                       :socket,
                       :seed, :json, :keep_logs, :max_seconds, keyword_init: true)

  def self.parse_options(argv)
    o = Options.new(quick: false, scenarios: SCENARIOS, lock: true, socket: false, seed: Random.new_seed % 1_000_000)
    given = {}
    parser = OptionParser.new do |p|
      p.banner = "Usage: ruby -Ilib chaos/mysql.rb [options]    (or: bundle exec rake chaos:mysql CHAOS_ARGS=\"...\")"
      p.separator ""
      p.separator "Worker processes enter a section guarded by with_distributed_mutex(#{Chaos::MUTEX_ID.inspect}) (backend"
      p.separator ":mysql, a private mariadbd) again and again while a driver breaks things:"
      p.separator "  kill    kill -9 a worker (mostly one inside its section), respawn a replacement"
      p.separator "  pause   SIGSTOP a holder inside its section, shorter and longer than the lease"
      p.separator "          (lease = the session's wait_timeout = lock_ttl + #{WAIT_MARGIN} s), and a waiter"
      p.separator "          longer than the lease (granted while stopped, its session dropped: told)"
      p.separator "  server  kill -9 mariadbd and start it again; shut it down cleanly and start it again"
      p.separator "Exit status 1 on any overlap under kill -9, in a short-pause window or outside every"
      p.separator "fault window; on an overlap in a long-pause, waiter-pause or restart window where"
      p.separator "neither section was told (LockLostError); on a long-paused or restarted-under holder"
      p.separator "not told; on no"
      p.separator "section after a restart; on a worker crash or a scenario that did not finish."
      p.separator ""
      p.on("--quick", "short run, ~40 s (10 sections per worker, one fault of each kind)") { o.quick = true }
      p.on("--scenario NAME", SCENARIOS + %w[all], "kill, pause, server or all (default all)") do |s|
        o.scenarios = s == "all" ? SCENARIOS : [s]
      end
      p.on("--procs N", Integer, "worker processes (default 6)") { |v| given[:procs] = v }
      p.on("--sections M", Integer, "sections each worker completes at least (default 50; quick 10)") { |v| given[:sections] = v }
      p.on("--hold-ms MS", Float, "a section sleeps rand(0..MS) ms (default 20)") { |v| given[:hold_ms] = v }
      p.on("--ttl S", Integer, "lock_ttl in seconds (default 1: lease 3 s)") { |v| given[:ttl] = v }
      p.on("--io-timeout S", Float, "io_timeout and connect_timeout in seconds (default 0.5)") { |v| given[:io_timeout] = v }
      p.on("--kill-every A..B", "seconds between two kills, drawn from A..B (default 0.2..0.6)") do |v|
        a, b = v.split("..", 2).map { |x| Float(x) }
        raise OptionParser::InvalidArgument, "--kill-every #{v}" unless a && b && a.positive? && b >= a

        given[:kill_every] = a..b
      end
      p.on("--kill-in-section PCT", Integer, "% of kills aimed at a worker inside its section (default 75)") { |v| given[:kill_in_section] = v }
      p.on("--min-kills N", Integer, "kills inside a section before the kill scenario may end (default 30; quick 10)") { |v| given[:min_kills] = v }
      p.on("--crashes N", Integer, "kill -9 of mariadbd, then a start (default 3; quick 1)") { |v| given[:crashes] = v }
      p.on("--shutdowns N", Integer, "clean shutdowns (SIGTERM) of mariadbd, then a start (default 2; quick 1)") { |v| given[:shutdowns] = v }
      p.on("--short-pauses N", Integer, "holder pauses shorter than the lease (default 4; quick 1)") { |v| given[:short_pauses] = v }
      p.on("--long-pauses N", Integer, "holder pauses longer than the lease (default 3; quick 1)") { |v| given[:long_pauses] = v }
      p.on("--waiter-pauses N", Integer, "pauses of a waiter (a worker outside its section) longer than the lease " \
                                         "(default 2; quick 1)") { |v| given[:waiter_pauses] = v }
      p.on("--socket", "connect through mariadbd's unix socket instead of TCP") { o.socket = true }
      p.on("--no-lock", "run the sections WITHOUT the mutex: shows that the checker finds overlaps") { o.lock = false }
      p.on("--seed N", Integer, "seed for the driver's and workers' choices") { |v| o.seed = v }
      p.on("--json PATH", "also write the results as JSON to PATH") { |v| o.json = v }
      p.on("--keep-logs", "keep the section logs (they are kept anyway when the run fails)") { o.keep_logs = true }
      p.on("--max-seconds S", Float, "give up a scenario after S seconds (default 150; quick 40)") { |v| given[:max_seconds] = v }
      p.on("-h", "--help", "this help") do
        puts p
        exit 0
      end
    end
    parser.parse!(argv)
    raise OptionParser::InvalidArgument, argv.join(" ") unless argv.empty?

    q = o.quick
    defaults = { procs: 6, sections: q ? 10 : 50, hold_ms: 20.0, ttl: 1, io_timeout: 0.5, kill_every: 0.2..0.6,
                 kill_in_section: 75, min_kills: q ? 10 : 30, crashes: q ? 1 : 3, shutdowns: q ? 1 : 2,
                 short_pauses: q ? 1 : 4, long_pauses: q ? 1 : 3, waiter_pauses: q ? 1 : 2, max_seconds: q ? 40.0 : 150.0 }
    defaults.merge(given).each { |k, v| o[k] = v }
    raise OptionParser::InvalidArgument, "--procs must be at least 2" if o.procs < 2
    raise OptionParser::InvalidArgument, "--ttl must be at least 1" if o.ttl < 1

    o
  rescue OptionParser::ParseError => e
    warn "chaos/mysql.rb: #{e.message} (see --help)"
    exit 2
  end

  # chaos/run.rb's driver (workers, logs, kill -9 scenario, overlap finder)
  # with the :mysql faults, verdict and report.
  class Driver < Chaos::Driver
    include Report

    # A fault: what, when (CLOCK_MONOTONIC), and the holder it hit (pid and
    # the sid of the section it was inside), if any.
    Fault = Struct.new(:kind, :n, :start, :stop, :until, :seconds, :targeted, :pid, :sid, :after, :inside, keyword_init: true)
    KINDS = %i[short_pause long_pause waiter_pause crash shutdown].freeze

    def initialize(opts)
      super
      @lease = opts.ttl + WAIT_MARGIN
    end

    private

    def start_server
      @server = Servers::MariaDB.new.start
      @version = @server.sql("SELECT VERSION()").dig(0, 0)
      @url = @opts.socket ? @server.socket_url : @server.url
    end

    def store_settings(config)
      config.backend = :mysql
      config.mysql_url = @url
    end


    def header
      "MegaMutex chaos, backend :mysql: MariaDB #{@version} on #{@opts.socket ? @server.socket_path : @server.address}, " \
        "lock_ttl #{@opts.ttl} s (lease: wait_timeout #{@lease} s), io_timeout #{@opts.io_timeout} s, " \
        "#{@opts.procs} procs x >= #{@opts.sections} sections, hold <= #{@opts.hold_ms.round(1)} ms, " \
        "#{@opts.lock ? 'with the mutex' : 'WITHOUT THE MUTEX (--no-lock)'}, seed #{@opts.seed}"
    end

    # -- scenario: holders paused --

    def scenario_pause
      plan = (%i[short_pause] * @opts.short_pauses) + (%i[long_pause] * @opts.long_pauses) +
             (%i[waiter_pause] * @opts.waiter_pauses)
      faulty_scenario("pause", plan.shuffle(random: @rng)) do |kind, n|
        kind == :waiter_pause ? waiter_pause_fault(n) : pause_fault(kind, n)
      end
    end

    # -- scenario: server restarts --

    def scenario_server
      plan = (%i[crash] * @opts.crashes) + (%i[shutdown] * @opts.shutdowns)
      faulty_scenario("server", plan.shuffle(random: @rng)) { |kind, n| restart_fault(kind, n) }
    end

    def faulty_scenario(name, plan)
      start_scenario(name)
      faults = []
      pump(Chaos.now + 0.5) # everybody running and contending
      plan.each_with_index do |kind, i|
        break if @timed_out

        faults << yield(kind, i + 1)
      end
      record, wall = finish_scenario
      summarize(name, record, wall, kills: [], faults: faults)
    ensure
      kill_all_workers
    end

    # Asks for one long section (`hold` seconds) and waits for a worker to
    # enter it; returns its pid, or nil (then the request is withdrawn).
    def long_holder(hold)
      path = File.join(@dir, "long-hold")
      File.write("#{path}.tmp", hold.to_s)
      File.rename("#{path}.tmp", path)
      holder = nil
      pump(Chaos.now + 5 * @lease) do
        holder = @tail.pids.find { |pid, s| s.inside && s.long && @workers.key?(pid) }&.first
      end
      FileUtils.rm_f(path) unless holder
      holder
    end

    # Seconds a short pause lasts: the session is silent for at most the
    # keeper's ttl/3 before it plus the pause, well inside wait_timeout.
    def short_pause_seconds
      @rng.rand((0.25 * @lease)..(0.5 * @lease))
    end

    # SIGSTOP of a worker inside a long section, then SIGCONT. The section
    # goes on for a while after the resume, so that a lost lock is seen
    # while the holder is still inside.
    def pause_fault(kind, n)
      seconds = kind == :short_pause ? short_pause_seconds : @lease + 1.0
      offset = @rng.rand(0.05..0.2)
      # The section's sleep does not count the time the process is stopped:
      # it goes on for `after` seconds after the resume.
      after = kind == :short_pause ? @opts.ttl + 0.5 : 0.5
      holder = long_holder(offset + after)
      f = Fault.new(kind: kind, n: n, targeted: !holder.nil?, seconds: seconds, pid: holder)
      unless holder
        f.start = f.stop = Chaos.now
        return f
      end
      state = @tail.pids[holder]
      f.sid = state.sid
      pump(state.entered + offset)
      f.start = Chaos.now
      begin
        Process.kill(:STOP, holder)
        stopped(holder)
        pump(f.start + seconds)
      ensure
        Process.kill(:CONT, holder) rescue nil # rubocop:disable Style/RescueModifier
      end
      f.stop = Chaos.now
      @counts[kind] += 1
      pump { !@tail.pids[holder].inside || !@workers.key?(holder) }
      pump(Chaos.now + 0.3)
      f
    end

    # SIGSTOP, for longer than the lease, of a worker outside its section
    # (most of them are waiting in GET_LOCK): the server grants it the lock
    # while it is stopped, then drops its silent session after wait_timeout
    # and grants the next waiter. When it resumes it reads the grant and
    # enters (its section is found in the logs afterwards: see summarize);
    # it must be told.
    def waiter_pause_fault(n)
      seconds = @lease + 1.0
      pump(Chaos.now + 0.1)
      waiter = (@workers.keys - @tail.inside).sample(random: @rng)
      f = Fault.new(kind: :waiter_pause, n: n, targeted: !waiter.nil?, seconds: seconds, pid: waiter)
      f.start = Chaos.now
      unless waiter
        f.stop = f.start
        return f
      end
      exits = @tail.pids[waiter].exits
      begin
        Process.kill(:STOP, waiter)
        stopped(waiter)
        pump(f.start + seconds)
      ensure
        Process.kill(:CONT, waiter) rescue nil # rubocop:disable Style/RescueModifier
      end
      f.stop = Chaos.now
      @counts[:waiter_pause] += 1
      pump(f.stop + 5) { @tail.pids[waiter].exits > exits || !@workers.key?(waiter) }
      pump(Chaos.now + 0.3)
      f
    end

    # Waits until every thread of `pid` is stopped (kill returns before).
    def stopped(pid)
      deadline = Chaos.now + 5
      loop do
        states = Dir["/proc/#{pid}/task/*/stat"].filter_map { |p| File.read(p)[/\) (\S)/, 1] rescue nil } # rubocop:disable Style/RescueModifier
        return if states.all?("T") || Chaos.now > deadline

        sleep 0.001
      end
    end

    # mariadbd killed with kill -9 (:crash) or shut down with SIGTERM
    # (:shutdown), then started again on the same port and socket, while a
    # worker is inside a long section.
    def restart_fault(kind, n)
      offset = @rng.rand(0.05..0.2)
      holder = long_holder(offset + @opts.ttl + 1.0)
      f = Fault.new(kind: kind, n: n, targeted: !holder.nil?, pid: holder)
      if holder
        f.sid = @tail.pids[holder].sid
        pump(@tail.pids[holder].entered + offset)
      end
      f.start = Chaos.now
      port = @server.port
      if kind == :shutdown
        pid = @server.pid
        Process.kill(:TERM, pid)
        # Until it is a zombie (exited, not reaped: its pid stays ours), then restart reaps it.
        pump(Chaos.now + 60) { (File.read("/proc/#{pid}/stat")[/\) (\S)/, 1] rescue "Z") == "Z" } # rubocop:disable Style/RescueModifier
      end
      @server.restart
      raise "mariadbd came back on port #{@server.port}, not #{port}" unless @server.port == port

      f.stop = Chaos.now
      f.seconds = f.stop - f.start
      @counts[kind] += 1
      pump(f.stop + @lease + 0.3)
      pump { !@tail.pids[holder].inside || !@workers.key?(holder) } if holder
      f
    end

    # -- figures --

    # The window of a fault an overlap belongs to: from the fault's start to
    # the lease after its stop (a session the server has not dropped yet),
    # or to the end of the section of the holder it hit, if that is later
    # (a stopped process's sleep does not count the time it was stopped:
    # the paused holder stays inside that much longer).
    # A pause beyond the lease explains only overlaps of the process it
    # stopped (the fault that hit one of the two sections first, else the
    # latest that stopped one of the two processes); a restart (every session lost) explains any pair in its
    # window; a short pause explains none (an overlap there is a violation).
    def window_of(overlap, faults)
      near = faults.select { |f| f.targeted && overlap.start >= f.start - 0.05 && overlap.start <= f.until }
      near.find { |f| [overlap.a.sid, overlap.b.sid].include?(f.sid) } ||
        near.reverse.find { |f| [overlap.a.pid, overlap.b.pid].include?(f.pid) } ||
        near.find { |f| %i[crash shutdown short_pause].include?(f.kind) }
    end

    def summarize(name, record, wall, kills:, faults:)
      # A killed worker's section ends at the kill: a SIGKILLed process runs
      # no more of its section, and the server may grant its lock (the
      # session ends as the process exits) before waitpid returns here.
      record.sections.each_value do |s|
        at = @deaths.dig(s.pid, :kill)
        s.end = at if s.outcome == "killed" && at && at < s.end
      end
      faults.each do |f|
        next unless f.kind == :waiter_pause && f.targeted

        # Its section in progress at the stop (it had entered after the
        # driver last read its log: then it was a paused holder after all),
        # or else the first it entered after.
        mine = record.sections.values.select { |x| x.pid == f.pid && x.enter }
        current = mine.find { |x| x.enter <= f.start && x.end > f.start }
        f.inside = !current.nil?
        f.sid = (current || mine.select { |x| x.enter > f.start }.min_by(&:enter))&.sid
      end
      faults.each do |f|
        held = f.targeted && record.sections[f.sid]&.end
        f.until = [f.stop + @lease + 1.0, held ? held + 0.05 : 0].max
      end
      overlaps = Chaos.overlaps(record.sections)
      overlaps.each { |o| o.window = name == "kill" ? nil : window_of(o, faults) }
      by = Hash.new(0)
      overlaps.each do |o|
        where = name == "kill" ? :kill : (o.window&.kind || :outside)
        told = o.a.outcome == "LockLostError" || o.b.outcome == "LockLostError"
        by[where] += 1
        by[:"#{where}_untold"] += 1 unless told
      end
      entries = record.sections.values.filter_map(&:enter).sort
      faults.each do |f|
        following = faults.find { |g| g.start > f.start }&.start || Float::INFINITY
        f.after = entries.count { |e| e > f.stop && e < following }
      end
      # How long the lock stayed unusable: from a long pause's start to the
      # next entry by another process (about the lease: the server drops
      # the silent session); from a restart's start to the next entry.
      others = ->(f) { record.sections.values.select { |x| x.enter && x.enter > f.start && x.pid != f.pid }.map(&:enter).min }
      free_after = lambda do |kinds|
        faults.select { |f| f.targeted && kinds.include?(f.kind) }.filter_map { |f| (e = others.(f)) && e - f.start }
      end
      paused_gaps = free_after.(%i[long_pause])
      restart_gaps = free_after.(%i[crash shutdown])
      hit = faults.select(&:targeted)
      told = ->(kinds) { hit.count { |f| kinds.include?(f.kind) && record.sections[f.sid]&.outcome == "LockLostError" } }
      gaps = kill_gaps(record, kills)
      crashes = record.crashes
      problems = violations(name, by, faults, hit, told)
      failed = @timed_out || !crashes.empty? || problems.any?
      @failed_dirs << @dir if failed || @opts.keep_logs
      FileUtils.rm_rf(@dir) unless failed || @opts.keep_logs
      {
        name: name, wall: wall, timed_out: @timed_out, dir: @dir, started: @started,
        completed: record.sections.values.count(&:exit), target: @opts.procs * @opts.sections,
        kills: kills.size, kills_in_section: kills.count { |k| k[:in_section] },
        respawns: @counts[:respawns], crashes: crashes,
        short_pauses: @counts[:short_pause], long_pauses: @counts[:long_pause], waiter_pauses: @counts[:waiter_pause],
        stale_waiters_told: told.(%i[waiter_pause]),
        long_paused_holders: hit.count { |f| f.kind == :long_pause }, told_long_pause: told.(%i[long_pause]),
        told_short_pause: told.(%i[short_pause]),
        server_crashes: @counts[:crash], shutdowns: @counts[:shutdown],
        restarts: @counts[:crash] + @counts[:shutdown],
        restarted_holders: hit.count { |f| %i[crash shutdown].include?(f.kind) }, told_restart: told.(%i[crash shutdown]),
        sections_after_restart: faults.select { |f| %i[crash shutdown].include?(f.kind) }.map(&:after).min,
        faults: faults, outcomes: hit.to_h { |f| [f.sid, record.sections[f.sid]&.outcome] }, problems: problems,
        conn: record.counts[:conn], conn_acquire: record.counts[:conn_acquire], conn_release: record.counts[:conn_release],
        lost: record.counts[:lost], server_errors: record.counts[:server_error], timeouts: record.counts[:timeout],
        violations: overlaps.size, by: by, overlaps: overlaps, streak: longest_streak(record),
        kill_gap_median: median(gaps), kill_gap_max: gaps.max, kill_gaps: gaps.size,
        long_pause_free_min: paused_gaps.min, long_pause_free_max: paused_gaps.max,
        restart_free_min: restart_gaps.min, restart_free_max: restart_gaps.max
      }
    end

    # The reasons a scenario fails (empty: it passed).
    def violations(name, by, faults, hit, told)
      v = []
      v << "#{by[:kill]} overlap(s) under kill -9" if by[:kill].positive?
      v << "#{by[:short_pause]} overlap(s) in short-pause windows" if by[:short_pause].positive?
      v << "#{by[:outside]} overlap(s) outside every fault window" if by[:outside].positive?
      %i[long_pause waiter_pause crash shutdown].each do |k|
        v << "#{by[:"#{k}_untold"]} overlap(s) in #{k.to_s.tr('_', '-')} windows, neither section told" if by[:"#{k}_untold"].positive?
      end
      long = hit.count { |f| f.kind == :long_pause }
      v << "#{long - told.(%i[long_pause])} of #{long} holder(s) paused beyond the lease NOT told" if told.(%i[long_pause]) < long
      restarted = hit.count { |f| %i[crash shutdown].include?(f.kind) }
      v << "#{restarted - told.(%i[crash shutdown])} of #{restarted} holder(s) under a restart NOT told" if told.(%i[crash shutdown]) < restarted
      v << "no section after restart ##{faults.find { |f| f.after.to_i.zero? }&.n}" if name == "server" && faults.any? { |f| f.after.to_i.zero? }
      v
    end

    # From each kill -9 of a worker inside its section (the kill(2) call)
    # to the next entry by anyone.
    def kill_gaps(record, kills)
      enters = record.sections.values.filter_map(&:enter).sort
      kills.select { |k| k[:in_section] }.filter_map do |k|
        following = enters.bsearch { |e| e > k[:at] }
        following && following - k[:at]
      end
    end

    def median(values)
      return nil if values.empty?

      sorted = values.sort
      mid = sorted.size / 2
      sorted.size.odd? ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0
    end
  end
end

if $PROGRAM_NAME == __FILE__
  opts = MysqlChaos.parse_options(ARGV)
  unless Servers::MariaDB.available?
    warn "chaos/mysql.rb: mariadbd and the mariadb client are needed (apt-get install mariadb-server mariadb-client)"
    exit 2
  end
  driver = MysqlChaos::Driver.new(opts)
  code = begin
    driver.run
  rescue Interrupt, SignalException
    warn "chaos/mysql.rb: interrupted"
    130
  end
  exit code
end
