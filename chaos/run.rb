# frozen_string_literal: true

# Chaos suite for MegaMutex: proves mutual exclusion while lock holders are
# killed with SIGKILL and while memcached is restarted and paused, and reports
# the figures. Every worker process logs each entry and exit of its critical
# section with CLOCK_MONOTONIC (one clock for all processes on a machine); the
# logs are then checked for sections of different processes that overlap.
#
#   ruby -Ilib chaos/run.rb --quick     # ~15 s; bundle exec rake chaos runs the full one
#   ruby -Ilib chaos/run.rb --help
#
# It starts its own memcached on a free loopback port (Servers::Memcached,
# spec/support/servers.rb) and stops it, and every worker, when it ends.

require "optparse"
require "json"
require "tmpdir"
require "fileutils"
require "mega_mutex"
require_relative "../spec/support/servers"

module Chaos
  MUTEX_ID = "chaos-section"

  def self.now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # ---- options -------------------------------------------------------------

  Options = Struct.new(:quick, :scenarios, :procs, :sections, :hold_ms, :ttl, :io_timeout, :lock,
                       :kill_every, :kill_in_section, :min_kills, :restarts, :short_pauses,
                       :long_pauses, :short_pause_seconds, :seed, :json, :keep_logs, :max_seconds,
                       keyword_init: true)

  def self.parse_options(argv)
    o = Options.new(quick: false, scenarios: %w[kill server], lock: true, seed: Random.new_seed % 1_000_000)
    given = {}
    parser = OptionParser.new do |p|
      p.banner = "Usage: ruby -Ilib chaos/run.rb [options]    (or: bundle exec rake chaos CHAOS_ARGS=\"...\")"
      p.separator ""
      p.separator "Runs worker processes that each enter a critical section guarded by"
      p.separator "with_distributed_mutex(#{MUTEX_ID.inspect}) many times, while a driver breaks things:"
      p.separator "  kill    kill -9 a worker (mostly one inside its section), respawn a replacement"
      p.separator "  server  restart memcached (all locks lost), pause it (SIGSTOP/SIGCONT) for less"
      p.separator "          and for more than the lease; each fault hits while a worker is inside"
      p.separator "          a long section. Workers rescue, count and retry ConnectionError and"
      p.separator "          LockLostError."
      p.separator "Then it finds overlapping sections of different processes (violations)."
      p.separator "Exit status 1 if there is any violation in the kill scenario, in a short-pause"
      p.separator "window or outside every fault window, or if a worker crashed or a scenario"
      p.separator "did not finish; violations around restarts and long pauses are expected (the"
      p.separator "lock is lost there) and only reported, with whether the holder was told."
      p.separator ""
      p.on("--quick", "short run, ~15 s (lock_ttl 1, 10 sections per worker, fewer faults)") { o.quick = true }
      p.on("--scenario NAME", %w[kill server both], "kill, server or both (default both)") do |s|
        o.scenarios = s == "both" ? %w[kill server] : [s]
      end
      p.on("--procs N", Integer, "worker processes (default 6)") { |v| given[:procs] = v }
      p.on("--sections M", Integer, "sections each worker completes at least (default 50; quick 10)") { |v| given[:sections] = v }
      p.on("--hold-ms MS", Float, "a section sleeps rand(0..MS) ms (default 20)") { |v| given[:hold_ms] = v }
      p.on("--ttl S", Integer, "lock_ttl, the lease in seconds (default 2; quick 1)") { |v| given[:ttl] = v }
      p.on("--io-timeout S", Float, "io_timeout and connect_timeout in seconds (default 0.5)") { |v| given[:io_timeout] = v }
      p.on("--kill-every A..B", "seconds between two kills, drawn from A..B (default 0.3..1.0)") do |v|
        a, b = v.split("..", 2).map { |x| Float(x) }
        raise OptionParser::InvalidArgument, "--kill-every #{v}" unless a && b && a.positive? && b >= a

        given[:kill_every] = a..b
      end
      p.on("--kill-in-section PCT", Integer, "% of kills aimed at the worker inside its section (default 75)") { |v| given[:kill_in_section] = v }
      p.on("--min-kills N", Integer, "kills inside a section before the kill scenario may end (default 5; quick 2)") { |v| given[:min_kills] = v }
      p.on("--restarts N", Integer, "memcached restarts (default 3; quick 1)") { |v| given[:restarts] = v }
      p.on("--short-pauses N", Integer, "pauses shorter than the lease (default 3; quick 1)") { |v| given[:short_pauses] = v }
      p.on("--short-pause-seconds S", Float, "length of every short pause (default: random in 0.25 ttl .. 2/3 ttl - 0.35)") do |v|
        given[:short_pause_seconds] = v
      end
      p.on("--long-pauses N", Integer, "pauses longer than the lease (default 2; quick 1; 0 for none)") { |v| given[:long_pauses] = v }
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

    defaults = { procs: 6, sections: o.quick ? 10 : 50, hold_ms: 20.0, ttl: o.quick ? 1 : 2, io_timeout: 0.5,
                 kill_every: 0.3..1.0, kill_in_section: 75, min_kills: o.quick ? 2 : 5,
                 restarts: o.quick ? 1 : 3, short_pauses: o.quick ? 1 : 3, long_pauses: o.quick ? 1 : 2,
                 max_seconds: o.quick ? 40.0 : 150.0 }
    defaults.merge(given).each { |k, v| o[k] = v }
    raise OptionParser::InvalidArgument, "--procs must be at least 2" if o.procs < 2
    raise OptionParser::InvalidArgument, "--ttl must be at least 1" if o.ttl < 1

    o
  rescue OptionParser::ParseError => e
    warn "chaos/run.rb: #{e.message} (see --help)"
    exit 2
  end

  # ---- worker ----------------------------------------------------------------

  # Lines of a worker's log (one write(2) each, times from CLOCK_MONOTONIC):
  #   B pid slot t          started        E sid t        entered its section
  #   H sid seconds         long section   X sid t        left its section (block done)
  #   O sid t               released       L sid t why    LockLostError after the block
  #   C sid t msg           ConnectionError (before the block if no E for sid)
  #   S sid t msg           ServerError    T sid t        TimeoutError
  #   W t msg / G t msg     the gem's warn / error log lines
  #   Q pid t               finished       Z t msg        crashed (unexpected exception)
  class Worker
    # Logger for the gem: warn and error lines go to the worker's log.
    class Log
      def initialize(emit)
        @emit = emit
      end

      def debug(*) = nil
      def info(*) = nil

      def warn(msg = nil)
        @emit.call("W #{format('%.6f', Chaos.now)} #{(msg || yield).to_s.tr("\r\n", '  ')}")
      end

      def error(msg = nil)
        @emit.call("G #{format('%.6f', Chaos.now)} #{(msg || yield).to_s.tr("\r\n", '  ')}")
      end
    end

    def initialize(slot:, quota:, dir:, opts:, driver_pid:)
      @slot = slot
      @quota = quota
      @dir = dir
      @opts = opts
      @driver_pid = driver_pid
      @rng = Random.new(opts.seed * 7919 + Process.pid)
    end

    def run
      log = File.open(Chaos.log_path(@dir, @slot, Process.pid), File::WRONLY | File::APPEND | File::CREAT)
      log.sync = true
      @log = log
      MegaMutex.configure { |c| c.logger = Log.new(method(:emit)) }
      emit("B #{Process.pid} #{@slot} #{t}")
      done = 0
      n = 0
      while done < @quota || File.exist?(File.join(@dir, "keep-going"))
        exit!(3) if Process.ppid != @driver_pid # the driver is gone: do not linger

        n += 1
        done += 1 if section("#{Process.pid}.#{n}")
      end
      emit("Q #{Process.pid} #{t}")
      log.close
      exit!(0)
    rescue Exception => e # a worker reports whatever ends it, then dies without at_exit hooks
      emit("Z #{t} #{e.class}: #{e.message.tr("\r\n", '  ')} @ #{Array(e.backtrace).first}") if @log
      exit!(1)
    end

    private

    def t
      format("%.6f", Chaos.now)
    end

    def emit(line)
      @log.write("#{line}\n")
    end

    # One critical section; true if its block ran to the end.
    def section(sid)
      exited = false
      body = lambda do
        emit("E #{sid} #{t}")
        long = take_long_hold
        if long
          emit("H #{sid} #{long}")
          sleep long
        else
          sleep @rng.rand * @opts.hold_ms / 1000.0
        end
        emit("X #{sid} #{t}")
        exited = true
      end
      if @opts.lock
        MegaMutex.with_distributed_mutex(MUTEX_ID, timeout: 30, &body)
      else
        body.call
        sleep 0.002 # roughly what taking and releasing the lock would take
      end
      emit("O #{sid} #{t}")
      exited
    rescue MegaMutex::LockLostError => e
      emit("L #{sid} #{t} #{e.reason}")
      exited
    rescue MegaMutex::ConnectionError => e
      emit("C #{sid} #{t} #{e.message.tr("\r\n", '  ')}")
      sleep 0.02 + @rng.rand * 0.03 # the server may be restarting: do not spin
      exited
    rescue MegaMutex::ServerError => e
      emit("S #{sid} #{t} #{e.message.tr("\r\n", '  ')}")
      sleep 0.05
      exited
    rescue MegaMutex::TimeoutError
      emit("T #{sid} #{t}")
      exited
    end

    # The driver asks for one long section by writing the file "long-hold"
    # (its seconds); the first worker to rename it away holds that long.
    def take_long_hold
      path = File.join(@dir, "long-hold")
      mine = "#{path}.#{Process.pid}"
      File.rename(path, mine)
      seconds = Float(File.read(mine))
      File.delete(mine)
      seconds
    rescue Errno::ENOENT
      nil
    end
  end

  def self.log_path(dir, slot, pid)
    File.join(dir, "w#{slot}-#{pid}.log")
  end

  # ---- reading the logs ------------------------------------------------------

  # Follows the workers' logs as they grow (complete lines only).
  class Tail
    PidState = Struct.new(:slot, :inside, :sid, :entered, :long, :exits, :quit, keyword_init: true)

    attr_reader :pids

    def initialize
      @files = {} # pid => [path, offset, partial]
      @pids = {}  # pid => PidState
    end

    def watch(pid, slot, path)
      @files[pid] = [path, 0, +""]
      @pids[pid] = PidState.new(slot: slot, inside: false, exits: 0, quit: false)
    end

    def poll
      @files.each do |pid, entry|
        path, offset, partial = entry
        data = begin
          File.open(path, "rb") do |f|
            f.seek(offset)
            f.read
          end
        rescue Errno::ENOENT
          next
        end
        next if data.nil? || data.empty?

        entry[1] = offset + data.bytesize
        partial << data
        lines = partial.split("\n", -1)
        entry[2] = lines.pop
        lines.each { |line| feed(@pids[pid], line) }
      end
      self
    end

    # @return [Array<Integer>] pids whose last line says they are inside their section
    def inside
      @pids.select { |_, s| s.inside }.keys
    end

    def completed
      @pids.values.sum(&:exits)
    end

    private

    def feed(state, line)
      kind, sid, rest = line.split(" ", 3)
      case kind
      when "E"
        state.inside = true
        state.sid = sid
        state.entered = Float(rest)
        state.long = nil
      when "H" then state.long = Float(rest)
      when "X"
        state.inside = false
        state.exits += 1
      when "Q" then state.quit = true
      end
    end
  end

  Section = Struct.new(:sid, :pid, :slot, :enter, :exit, :end, :long, :outcome, :detail, keyword_init: true)

  # Everything one scenario's logs say, once all workers are gone.
  class Record
    attr_reader :sections, :counts, :crashes

    def initialize(dir, deaths)
      @sections = {}
      @counts = Hash.new(0)
      @crashes = []
      Dir.glob(File.join(dir, "w*-*.log")).sort.each { |path| read(path, deaths) }
      @sections.each_value do |s|
        next unless s.enter

        s.end = s.exit || deaths.dig(s.pid, :dead) || Float::INFINITY
        s.outcome ||= if s.exit then "unfinished"
                      elsif deaths.dig(s.pid, :killed) then "killed"
                      else "died"
                      end
      end
    end

    private

    def read(path, deaths)
      slot = Integer(File.basename(path)[/\Aw(\d+)-/, 1])
      pid = Integer(File.basename(path, ".log")[/-(\d+)\z/, 1])
      File.foreach(path, chomp: true) do |line|
        kind, a, b, rest = line.split(" ", 4)
        section = ->(sid) { @sections[sid] ||= Section.new(sid: sid, pid: pid, slot: slot) }
        case kind
        when "E" then section.(a).enter = Float(b)
        when "H" then section.(a).long = Float(b)
        when "X" then section.(a).exit = Float(b)
        when "O" then section.(a).outcome = "ok"
        when "L"
          s = section.(a)
          s.outcome = "LockLostError"
          s.detail = rest
          @counts[:lost] += 1
        when "C"
          s = section.(a)
          if s.enter
            s.outcome = "ConnectionError at release"
            @counts[:conn_release] += 1
          else
            @counts[:conn_acquire] += 1
          end
          @counts[:conn] += 1
        when "S" then (section.(a).outcome = "ServerError") && @counts[:server_error] += 1
        when "T" then @counts[:timeout] += 1
        when "W" then @counts[:renew_failed] += 1 if line.include?("could not renew")
        when "Z" then @crashes << "pid #{pid}: #{line[2..]}"
        end
      end
      @crashes << "pid #{pid} exited with #{deaths.dig(pid, :status).inspect}" if deaths.dig(pid, :crashed) && @crashes.none? { |c| c.start_with?("pid #{pid}:") }
    end
  end

  Overlap = Struct.new(:a, :b, :start, :length, :window, keyword_init: true)

  # Pairs of sections of different processes that were inside at once.
  def self.overlaps(sections)
    ivs = sections.values.select(&:enter).sort_by(&:enter)
    active = []
    found = []
    ivs.each do |iv|
      active.reject! { |a| a.end <= iv.enter }
      active.each do |a|
        next if a.pid == iv.pid

        found << Overlap.new(a: a, b: iv, start: iv.enter, length: [a.end, iv.end].min - iv.enter)
      end
      active << iv
    end
    found
  end

  # ---- the driver ------------------------------------------------------------

  class Driver
    Fault = Struct.new(:kind, :n, :start, :stop, :seconds, :targeted, keyword_init: true)

    def initialize(opts)
      @opts = opts
      @rng = Random.new(opts.seed)
      @lease = opts.ttl + MegaMutex::Lock::WIRE_MARGIN # what the gem sends memcached
      @results = {}
      @failed_dirs = []
    end

    def run
      t0 = Chaos.now
      start_server
      MegaMutex.configure do |c|
        store_settings(c)
        c.namespace = "chaos#{@opts.seed}"
        c.lock_ttl = @opts.ttl
        c.io_timeout = @opts.io_timeout
        c.connect_timeout = @opts.io_timeout
        c.default_timeout = 30
        c.on_lock_lost = :raise
      end
      puts header
      $stdout.flush
      @opts.scenarios.each do |name|
        @results[name] = send("scenario_#{name}")
        $stdout.flush
      end
      verdict = report(Chaos.now - t0)
      write_json(verdict) if @opts.json
      verdict[:pass] ? 0 : 1
    ensure
      @server&.stop
    end

    private

    # The server the workers lock on (@server, stopped at the end of #run)
    # and its version for the report.
    def start_server
      @server = Servers::Memcached.new(args: ["-M", "-m", "64"]).start
      @version = @server.stats["version"]
    end

    # The settings that point MegaMutex at @server.
    def store_settings(config)
      config.memcache_servers = [@server.address]
    end

    def header
      "MegaMutex chaos: memcached #{@version} on #{@server.address} (-M), lock_ttl #{@opts.ttl} s " \
        "(lease sent as #{@lease} s), io_timeout #{@opts.io_timeout} s, #{@opts.procs} procs x >= #{@opts.sections} sections, " \
        "hold <= #{@opts.hold_ms.round(1)} ms, #{@opts.lock ? 'with the mutex' : 'WITHOUT THE MUTEX (--no-lock)'}, seed #{@opts.seed}"
    end

    # -- workers --

    def start_scenario(name)
      @name = name
      @dir = Dir.mktmpdir("mega_mutex-chaos-#{name}-")
      FileUtils.touch(File.join(@dir, "keep-going"))
      @tail = Tail.new
      @workers = {}   # pid => slot
      @deaths = {}    # pid => { kill:, dead:, status:, killed:, crashed: }
      @slot_done = Hash.new(0)
      @counts = Hash.new(0)
      @started = Chaos.now
      @deadline = @started + @opts.max_seconds
      @timed_out = false
      @tearing_down = false
      @opts.procs.times { |slot| spawn_worker(slot) }
    end

    def spawn_worker(slot)
      quota = [@opts.sections - @slot_done[slot], 0].max
      driver = Process.pid
      opts = @opts
      dir = @dir
      pid = fork { Worker.new(slot: slot, quota: quota, dir: dir, opts: opts, driver_pid: driver).run }
      @workers[pid] = slot
      @tail.watch(pid, slot, Chaos.log_path(@dir, slot, pid))
      pid
    end

    def keep_going?
      File.exist?(File.join(@dir, "keep-going"))
    end

    def stop_keeping_going
      FileUtils.rm_f(File.join(@dir, "keep-going"))
    end

    # A worker is gone (status from waitpid): note when, and replace it if
    # its slot has sections left (or the scenario is not over yet).
    def buried(pid, status, killed_at: nil)
      dead = Chaos.now
      slot = @workers.delete(pid)
      @tail.poll
      exits = @tail.pids[pid].exits
      @slot_done[slot] += exits
      killed = status.signaled? && status.termsig == 9 && killed_at
      crashed = !killed && !status.success? && !@tearing_down
      @deaths[pid] = { kill: killed_at, dead: dead, status: status.to_s, killed: killed, crashed: crashed }
      @counts[:crashes] += 1 if crashed
      return unless killed || crashed
      return if @tearing_down
      return unless @slot_done[slot] < @opts.sections || keep_going?

      spawn_worker(slot)
      @counts[:respawns] += 1
    end

    def reap
      loop do
        pid, status = Process.wait2(-1, Process::WNOHANG)
        break if pid.nil?

        buried(pid, status) if @workers.key?(pid)
      end
    rescue Errno::ECHILD
      nil
    end

    # Reaps and follows the logs until `time` (or until the block is truthy).
    def pump(until_time = nil)
      loop do
        reap
        @tail.poll
        return true if block_given? && yield
        return false if until_time && Chaos.now >= until_time
        if Chaos.now > @deadline
          @timed_out = true
          return false
        end

        sleep 0.002
      end
    end

    def finish_scenario
      stop_keeping_going
      pump { @workers.empty? || @timed_out }
      @tearing_down = true # only after a time-out are workers left to stop here
      @workers.each_key do |pid|
        Process.kill(:KILL, pid)
      rescue Errno::ESRCH
        nil
      end
      @workers.keys.each do |pid|
        _, status = Process.wait2(pid)
        buried(pid, status)
      rescue Errno::ECHILD
        nil
      end
      wall = Chaos.now - @started
      record = Record.new(@dir, @deaths)
      [record, wall]
    end

    def kill_all_workers
      (@workers || {}).each_key do |pid|
        Process.kill(:KILL, pid)
        Process.wait(pid)
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      end
    end

    # -- scenario: kill -9 --

    def scenario_kill
      start_scenario("kill")
      target = @opts.procs * @opts.sections
      kills = []
      next_kill = Chaos.now + @rng.rand(@opts.kill_every)
      # Kill until the sections reach the target and enough kills hit a
      # worker inside its section; then let the workers finish their quotas.
      until @timed_out
        pump(next_kill) { @workers.empty? }
        break if @workers.empty? || @timed_out
        break if @tail.completed >= target && kills.count { |k| k[:in_section] } >= @opts.min_kills

        kill = kill_one
        kills << kill if kill
        next_kill = Chaos.now + @rng.rand(@opts.kill_every)
      end
      record, wall = finish_scenario
      summarize("kill", record, wall, kills: kills, faults: [])
    ensure
      kill_all_workers
    end

    # Kills a worker: mostly one inside its section (waiting up to 0.1 s for
    # one to be inside), else any. Returns what happened, or nil.
    def kill_one
      victim = nil
      if @rng.rand(100) < @opts.kill_in_section
        pump(Chaos.now + 0.1) { !(@tail.inside & @workers.keys).empty? || @workers.empty? }
        victim = (@tail.inside & @workers.keys).sample(random: @rng)
      end
      victim ||= @workers.keys.sample(random: @rng)
      return nil if victim.nil?

      at = Chaos.now
      Process.kill(:KILL, victim)
      _, status = Process.wait2(victim)
      buried(victim, status, killed_at: at)
      return nil unless @deaths[victim][:killed]

      state = @tail.pids[victim]
      { pid: victim, at: at, dead: @deaths[victim][:dead], in_section: state.inside, sid: state.sid }
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end

    # -- scenario: server restarts and pauses --

    def scenario_server
      start_scenario("server")
      plan = (%i[restart] * @opts.restarts) + (%i[short_pause] * @opts.short_pauses) + (%i[long_pause] * @opts.long_pauses)
      plan.shuffle!(random: @rng)
      faults = []
      pump(Chaos.now + 0.5) # everybody running and contending
      plan.each_with_index do |kind, i|
        break if @timed_out

        faults << fault(kind, i + 1)
      end
      record, wall = finish_scenario
      summarize("server", record, wall, kills: [], faults: faults)
    ensure
      kill_all_workers
    end

    # Seconds a short pause may last: a holder renews every ttl/3 and retries
    # a failed renewal io_timeout + 0.2 s later; a pause up to 2/3 ttl - 0.35 s
    # still lets a renewal land inside the lease.
    def short_pause_seconds
      return @opts.short_pause_seconds if @opts.short_pause_seconds

      lo = 0.25 * @opts.ttl
      hi = [(2.0 / 3) * @opts.ttl - 0.35, lo].max
      @rng.rand(lo..hi)
    end

    # One fault, fired while a worker is inside a long section (the worst
    # moment): ask for a long section, wait for a worker to enter it, hit.
    def fault(kind, n)
      pause = case kind
              when :short_pause then short_pause_seconds
              when :long_pause then @lease + 0.3
              end
      offset = @rng.rand(0.05..0.25)
      hold = case kind
             when :restart then @opts.ttl + 0.5
             when :short_pause then 0.25 + pause + @opts.ttl + 0.3
             else 0.25 + pause + 0.5
             end
      path = File.join(@dir, "long-hold")
      File.write("#{path}.tmp", hold.to_s)
      File.rename("#{path}.tmp", path)
      holder = nil
      pump(Chaos.now + 5 * @lease) do
        holder = @tail.pids.find { |pid, s| s.inside && s.long && @workers.key?(pid) }&.first
      end
      targeted = !holder.nil?
      FileUtils.rm_f(path) unless targeted
      pump(@tail.pids[holder].entered + offset) if targeted
      f = Fault.new(kind: kind, n: n, targeted: targeted, start: Chaos.now, seconds: pause)
      case kind
      when :restart
        port = @server.port
        @server.restart
        raise "memcached came back on port #{@server.port}, not #{port}" unless @server.port == port

        @counts[:restarts] += 1
      else
        @server.pause
        begin
          pump(Chaos.now + pause)
        ensure
          @server.resume
        end
        @counts[kind] += 1
      end
      f.stop = Chaos.now
      # Let it play out: the long section ends and the lease it had runs out
      # before the next fault, so each fault's window stands alone.
      pump(f.stop + @lease + 0.3)
      pump { !@tail.pids[holder].inside || !@workers.key?(holder) } if targeted
      f
    end

    # -- figures --

    def window_of(overlap, faults)
      faults.find { |f| overlap.start >= f.start - 0.05 && overlap.start <= f.stop + @lease + 0.3 }
    end

    def summarize(name, record, wall, kills:, faults:)
      overlaps = Chaos.overlaps(record.sections)
      overlaps.each { |o| o.window = window_of(o, faults) }
      by = { kill: 0, restart: 0, short_pause: 0, long_pause: 0, outside: 0 }
      overlaps.each do |o|
        key = name == "kill" ? :kill : (o.window ? o.window.kind : :outside)
        by[key] += 1
      end
      crashes = record.crashes
      failed = @timed_out || !crashes.empty? || by[:kill].positive? || by[:short_pause].positive? || by[:outside].positive?
      @failed_dirs << @dir if failed || @opts.keep_logs
      FileUtils.rm_rf(@dir) unless failed || @opts.keep_logs
      {
        name: name, wall: wall, timed_out: @timed_out, dir: @dir, started: @started,
        completed: record.sections.values.count(&:exit),
        target: @opts.procs * @opts.sections,
        kills: kills.size, kills_in_section: kills.count { |k| k[:in_section] },
        respawns: @counts[:respawns], crashes: crashes,
        restarts: @counts[:restarts], short_pauses: @counts[:short_pause], long_pauses: @counts[:long_pause],
        faults: faults,
        conn: record.counts[:conn], conn_acquire: record.counts[:conn_acquire], conn_release: record.counts[:conn_release],
        lost: record.counts[:lost], server_errors: record.counts[:server_error], timeouts: record.counts[:timeout],
        renew_failed: record.counts[:renew_failed],
        violations: overlaps.size, by: by, overlaps: overlaps, streak: longest_streak(record),
        kill_gap: kill_gap(record, kills)
      }
    end

    # The longest a lock stayed unusable after its holder was killed inside
    # its section: from the holder's death to the next entry by anyone.
    def kill_gap(record, kills)
      enters = record.sections.values.filter_map(&:enter).sort
      kills.select { |k| k[:in_section] }.filter_map do |k|
        following = enters.bsearch { |e| e > k[:dead] }
        following && following - k[:dead]
      end.max
    end

    # The most sections one process entered in a row (waiters are not
    # queued: a process that just released may take the lock straight back).
    def longest_streak(record)
      pids = record.sections.values.select(&:enter).sort_by(&:enter).map(&:pid)
      pids.chunk_while { |a, b| a == b }.map(&:size).max || 0
    end

    def report(total_wall)
      k = @results["kill"]
      s = @results["server"]
      cols = [k, s].compact
      row = lambda do |label, &f|
        format("%-34s", label) + cols.map { |r| format(" %12s", f.call(r)) }.join
      end
      dash = ->(v) { v.zero? ? "-" : v }
      lines = []
      lines << ""
      lines << format("%-34s", "") + cols.map { |r| format(" %12s", r[:name]) }.join
      lines << row.("sections completed (target)") { |r| "#{r[:completed]} (#{r[:target]})" }
      lines << row.("kills -9 (inside a section)") { |r| r[:name] == "kill" ? "#{r[:kills]} (#{r[:kills_in_section]})" : "-" }
      lines << row.("respawns") { |r| dash.(r[:respawns]) }
      lines << row.("restarts") { |r| dash.(r[:restarts]) }
      lines << row.("pauses short / long") { |r| r[:name] == "server" ? "#{r[:short_pauses]} / #{r[:long_pauses]}" : "-" }
      lines << row.("connection errors (acq/release)") { |r| "#{r[:conn]} (#{r[:conn_acquire]}/#{r[:conn_release]})" }
      lines << row.("renewals failed, retried") { |r| r[:renew_failed] }
      lines << row.("lost-lease errors") { |r| r[:lost] }
      lines << row.("server errors / lock timeouts") { |r| "#{r[:server_errors]} / #{r[:timeouts]}" }
      lines << row.("worker crashes") { |r| r[:crashes].size }
      lines << row.("VIOLATIONS (overlapping pairs)") { |r| r[:violations] }
      lines << row.("  kill scenario") { |r| r[:name] == "kill" ? r[:by][:kill] : "-" }
      lines << row.("  short-pause windows") { |r| r[:name] == "server" ? r[:by][:short_pause] : "-" }
      lines << row.("  restart windows (expected)") { |r| r[:name] == "server" ? r[:by][:restart] : "-" }
      lines << row.("  long-pause windows (expected)") { |r| r[:name] == "server" ? r[:by][:long_pause] : "-" }
      lines << row.("  outside fault windows") { |r| r[:name] == "server" ? r[:by][:outside] : "-" }
      lines << row.("lock free again after a kill, max") { |r| r[:kill_gap] ? format("%.2f s", r[:kill_gap]) : "-" }
      lines << row.("longest run by one process") { |r| r[:streak] }
      lines << row.("wall time") { |r| format("%.1f s", r[:wall]) }
      if s
        lines << ""
        lines << "faults (t from the scenario's start; each hit a worker inside a long section unless marked untargeted):"
        s[:faults].each do |f|
          what = f.kind == :restart ? "restart" : format("%s %.2f s", f.kind.to_s.tr("_", " "), f.seconds)
          lines << format("  #%d %-20s at %6.2f s%s", f.n, what, f.start - s[:started], f.targeted ? "" : "  (untargeted)")
        end
      end
      all = cols.flat_map { |r| r[:overlaps].map { |o| [r, o] } }
      unless all.empty?
        lines << ""
        lines << "overlaps, by the section A that others entered while A was inside (sid = pid.n;"
        lines << "\"told\" = what A's with_distributed_mutex raised after its block):"
        groups = all.group_by { |r, o| [r[:name], o.a.sid] }
        groups.first(10).each do |(name, _), list|
          o = list.first[1]
          where = name == "kill" ? "kill" : (o.window ? "#{o.window.kind.to_s.tr('_', '-')} ##{o.window.n}" : "OUTSIDE windows")
          bs = list.map { |_, x| x.b }
          outcomes = bs.map(&:outcome).tally.map { |k, v| "#{k} x#{v}" }.join(", ")
          lines << format("  %-15s A %s held %.3f s, told: %s; %d section(s) of %d other process(es) inside meanwhile " \
                          "(%.1f ms together; their outcome: %s)",
                          where, o.a.sid, o.a.end - o.a.enter, told(o.a), bs.size, bs.map(&:pid).uniq.size,
                          list.sum { |_, x| x.length } * 1000, outcomes)
        end
        lines << "  ... and #{groups.size - 10} more" if groups.size > 10
      end
      problems = []
      cols.each do |r|
        problems << "#{r[:name]}: did not finish within #{@opts.max_seconds} s" if r[:timed_out]
        problems.concat(r[:crashes].map { |c| "#{r[:name]}: worker crashed: #{c}" })
      end
      problems << "#{k[:by][:kill]} violation(s) under kill -9" if k && k[:by][:kill].positive?
      problems << "#{s[:by][:short_pause]} violation(s) in short-pause windows" if s && s[:by][:short_pause].positive?
      problems << "#{s[:by][:outside]} violation(s) outside every fault window" if s && s[:by][:outside].positive?
      problems << "kill scenario: no kill happened" if k && k[:kills].zero?
      expected = s ? s[:by][:restart] + s[:by][:long_pause] : 0
      lines << ""
      lines << format("total wall time %.1f s", total_wall)
      @failed_dirs.each { |d| lines << "logs kept in #{d}" }
      if problems.empty?
        note = expected.zero? ? "" : "; #{expected} overlap(s) around restarts/long pauses, where the lock is lost (expected)"
        lines << "PASS: no violation under kill -9 or short pauses, none outside fault windows#{note}"
      else
        lines << "FAIL: #{problems.join('; ')}"
      end
      puts lines
      { pass: problems.empty?, problems: problems, total_wall: total_wall }
    end

    def told(section)
      case section.outcome
      when "LockLostError" then "yes, LockLostError"
      when "killed" then "- (killed)"
      when "ConnectionError at release" then "no (ConnectionError at release)"
      else "NO (#{section.outcome})"
      end
    end

    # Keys of a scenario's result that the JSON gives in a form of its own, or not at all.
    JSON_REWRITTEN = %i[overlaps faults started outcomes].freeze

    def write_json(verdict)
      data = {
        options: @opts.to_h.merge(kill_every: @opts.kill_every.to_s), **json_server,
        pass: verdict[:pass], problems: verdict[:problems], total_wall: verdict[:total_wall],
        scenarios: @results.transform_values do |r|
          r.reject { |key, _| JSON_REWRITTEN.include?(key) }.merge(
            faults: r[:faults].map { |f| json_fault(r, f) },
            overlaps: r[:overlaps].map do |o|
              { a: o.a.sid, a_outcome: o.a.outcome, b: o.b.sid, b_outcome: o.b.outcome, ms: (o.length * 1000).round(3),
                window: o.window && "#{o.window.kind}##{o.window.n}" }
            end
          )
        end
      }
      File.write(@opts.json, JSON.pretty_generate(data))
    end

    # @return [Hash] the server's name and version, for the JSON
    def json_server
      { memcached: @version }
    end

    # A fault for the JSON: its times from the scenario's start.
    def json_fault(result, fault)
      fault.to_h.merge(start: (fault.start - result[:started]).round(3), stop: (fault.stop - result[:started]).round(3))
    end
  end
end

if $PROGRAM_NAME == __FILE__
  opts = Chaos.parse_options(ARGV)
  driver = Chaos::Driver.new(opts)
  code = begin
    driver.run
  rescue Interrupt, SignalException
    warn "chaos/run.rb: interrupted"
    130
  end
  exit code
end
