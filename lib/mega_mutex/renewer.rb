# frozen_string_literal: true

require_relative "renewer/lane"
require_relative "renewer/jobs"

module MegaMutex
  # Keeps held leases alive: each lock is extended, owner-checked and
  # atomically, a third of the way through its lease, so a block may run far
  # longer than lock_ttl while a crashed holder's lock still frees itself.
  #
  # memcached leases are renewed in C (ext/mega_mutex/renewer.c): one lane
  # per server, a pthread that needs no GVL, so neither Ruby threads hogging
  # the GVL nor a slow neighbouring server can starve a renewal. A Ruby
  # thread reports the leases it lost to their holders.
  #
  # The memory backend's leases are kept by the C renewer too (one lane for
  # the process's table). The other stores' leases (a quorum's), a session
  # store's refreshes and the clean-up of locks left by failed requests are
  # done here in Ruby by two kinds of thread:
  #
  # - the scheduler decides what is due and never waits on a server, so it
  #   can always tell a holder whose lease ran out before a renewal got
  #   through (`lost?`, the log, LockLostError) - whatever the servers do;
  # - one {Lane} per server does that server's requests, one after another,
  #   so a slow or paused server delays only the locks it keeps.
  #
  # Nothing that goes wrong in a request, a logger or a subscriber stops any
  # of these threads: renewal goes on while locks are held. Threads start on
  # first use, and again in a forked child, which renews nothing of its
  # parent's.
  # @api private
  class Renewer
    # Retry delay after a failed renewal (server unreachable), in seconds.
    RETRY = 0.2
    # While locks are being taken, the scheduler wakes at least this often
    # (seconds), so a new lock needs no wake-up call: below lock_ttl / 3 for
    # the shortest lease (1 s).
    IDLE_TICK = 0.25
    # Seconds without any lock after which the scheduler sleeps until signalled.
    IDLE_PARK = 5.0
    # Marks a renewal or clean-up handed to a lane and not finished yet.
    IN_FLIGHT = Float::INFINITY
    # Why a hold is lost when no renewal got through before its lease ended.
    RAN_OUT = "its lease ran out before a renewal got through (the server did not answer in time, " \
              "or renewals fell behind): another process may have taken it"

    class << self
      # Releases what this process still holds when it exits gracefully
      # (`exit`, the end of the script, an uncaught exception, SIGTERM's
      # default), instead of leaving it to the lease: locks taken with
      # Lock#lock and never unlocked, and those of threads that did not
      # unwind. Registered with at_exit when this file loads, so the
      # application's own at_exit blocks run first. `kill -9` still relies on
      # the lease.
      # @return [void]
      def release_at_exit
        r = @current
        r.release_all if r && r.pid == MegaMutex.pid && r.pid == Process.pid
      rescue Exception # rubocop:disable Lint/RescueException -- never fail an exit
        nil
      end

      # @return [Renewer] this process's renewer
      def current
        r = @current
        return r if r && r.pid == MegaMutex.pid

        @create_mutex ||= Mutex.new
        @create_mutex.synchronize do
          @current = new if @current.nil? || @current.pid != MegaMutex.pid
          @current
        end
      end
    end

    attr_reader :pid

    def initialize
      @pid = MegaMutex.pid
      @mutex = Mutex.new
      @wakeup = ConditionVariable.new
      @due = {}     # Lock::Hold => when to look at it next (its lease's end while a lane has it)
      @orphans = {} # Lock::Hold => [next try (IN_FLIGHT: a lane has it), first answer or nil, give up at]
      @lanes = {}   # [Pool, server] => Lane
      @leased = {}  # Native::Lease#id => Lock::Hold renewed by the C renewer
      @c_lanes = {} # a configuration's store => Native::Lease::Lane (a store of its own, in C)
      @lane_opening = Mutex.new
      @reporter = nil
      @thread = nil
      @wake_at = nil # when the scheduler will wake by itself; nil: only if signalled
      @active_at = now # when a lock was last taken
    end

    # Takes over a token whose take or release failed (a connection error,
    # or a release the server refused): the server may still apply that add
    # when it recovers (a paused server queues it), or still hold the lock the
    # release could not remove, leaving a lock nobody holds until its lease
    # runs out. The renewer removes it as soon as the server answers again.
    # @param hold [Lock::Hold] the failed take or release (not registered)
    def release_later(hold)
      return unless hold.pid == MegaMutex.pid # a parent's lock: never a forked child's to remove

      @mutex.synchronize do
        @orphans[hold] = [now + RETRY, nil, now + hold.wire_ttl + 1]
        start_thread
        @wakeup.signal
      end
    end

    # Starts renewing `hold` every ttl/3 seconds; `hold.valid_until` must be
    # set (the end of the lease it was taken with, by the monotonic clock).
    # A memcached hold (one whose `server` is known) goes to the C renewer.
    # @param hold [Lock::Hold]
    def add(hold)
      return watch(hold) if hold.server
      return if hold.session.nil? && watch_in_lane(hold)

      @mutex.synchronize do
        @active_at = now
        # A third of the way through the lease as taken (at once if the GVL
        # kept the taker that long), or through lock_ttl from now.
        due = [@active_at + hold.ttl / 3.0, hold.valid_until - hold.ttl * 2 / 3.0].min
        @due[hold] = due
        start_thread
        wake_by(due)
      end
    end

    # Under @mutex: makes sure the scheduler looks again by `at`. It wakes
    # at its own time (@wake_at) anyway; a signal (a thread switch on every
    # lock taken) is only needed when that is too late - or never, once it
    # has parked.
    def wake_by(at)
      @wakeup.signal if @wake_at.nil? || @wake_at > at
    end

    # Gives back every lock this process still holds (see
    # Renewer.release_at_exit); each release is bounded by io_timeout.
    # @return [void]
    def release_all
      holds = @mutex.synchronize { @leased.values + @due.keys }
      holds.each do |hold|
        next unless Lock.holds(hold.thread)[hold.key].equal?(hold) # released meanwhile

        remove(hold)
        client = hold.client
        if hold.session
          # A busy session is left to the exit itself: its connection closes, and the server frees its locks.
          hold.session.try_use { client&._release(hold.key, hold.token, hold.version) }
        elsif client
          client._release(hold.key, hold.token, hold.version)
        else
          hold.pool.with { |c| c._release(hold.key, hold.token, hold.version) }
        end
      rescue Exception # rubocop:disable Lint/RescueException -- the others still go back
        nil
      end
    end

    # Stops renewing `hold` (before it is released).
    def remove(hold)
      if (lease = hold.lease)
        lease.stop
        @mutex.synchronize { @leased.delete(lease.id) }
      else
        @mutex.synchronize { @due.delete(hold) }
      end
    end

    # @return [Integer] holds being renewed (for tests)
    def size
      @mutex.synchronize { @due.size + @leased.size }
    end

    # Runs one job in a lane's thread; never raises.
    # @param kind [Symbol] :renew or :clean_up
    # @param hold [Lock::Hold]
    # @return [void]
    def run_job(kind, hold)
      kind == :renew ? renew(hold) : clean_up(hold)
    rescue Exception => e # rubocop:disable Lint/RescueException -- a lane must outlive any failure
      hold.log(:error, "renewer: #{kind} of #{hold.key} failed: #{e.class}: #{e.message}")
      @mutex.synchronize do
        if kind == :renew
          wake_by(@due[hold] = now + RETRY) if @due.key?(hold)
        elsif (entry = @orphans[hold])
          wake_by(entry[0] = now + RETRY)
        end
      end
    end

    private

    # Hands `hold` to the C renewer: a lane (a C thread that needs no GVL)
    # per server keeps its lease, and a Ruby thread tells the holders of
    # leases it lost (Hold#lose!: the log, lost.mega_mutex). Hold#lost? asks
    # the lease directly, so a holder knows at once even when that thread is
    # starved of the GVL.
    def watch(hold)
      config = hold.config
      host, port = hold.server
      host = nil if config.backend == :memory # the memory store's lane (its table, no server)
      hold.lease = Native::Lease.start(host, port, (config.connect_timeout * 1000).ceil, (config.io_timeout * 1000).ceil,
                                       hold.key, hold.token, hold.ttl, hold.valid_until)
      @mutex.synchronize do
        @leased[hold.lease.id] = hold
        start_reporter
      end
    end

    # Hands a lease of a store without a server of its own (a quorum's) to
    # a C lane made for its configuration - a store of its own, renewed by
    # a C thread that needs no GVL, as memcached's are: a Ruby renewer that
    # a thread hogging the GVL starved let a waiter in while the holder was
    # inside. False when no lane can be made now (the Ruby renewer keeps it).
    # @return [Boolean]
    def watch_in_lane(hold)
      lane = c_lane(hold.config)
      return false if lane.nil?

      hold.lease = Native::Lease.start_in(lane, hold.key, hold.token, hold.ttl, hold.valid_until)
      @mutex.synchronize do
        @leased[hold.lease.id] = hold
        start_reporter
      end
      true
    end

    # The C lane for `config`'s store, made once (it opens a client of its
    # own, whose store it takes over); nil when it cannot be made.
    def c_lane(config)
      key = [config.backend, config.memcache_servers, config.connect_timeout, config.io_timeout,
             config.quorum_max_ttl, config.lock_ttl]
      @mutex.synchronize { @c_lanes[key] } || @lane_opening.synchronize do
        @mutex.synchronize { @c_lanes[key] } || begin
          lane = Native::Lease.lane(config.new_client, "#{config.backend} #{config.memcache_servers.join(',')}"[0, 1000])
          @mutex.synchronize { @c_lanes[key] = lane }
        end
      end
    rescue Error, SystemCallError
      nil
    end

    def start_reporter
      return if @reporter&.alive?

      @reporter = Thread.new do
        Thread.handle_interrupt(Object => :immediate) { report_losses }
      end
      @reporter.name = "mega_mutex losses"
      @reporter.report_on_exception = false
    end

    # The reporter: tells each holder whose lease the C renewer lost.
    def report_losses
      loop do
        id, reason = Native::Lease.next_loss(1.0)
        next if id.nil?

        hold = @mutex.synchronize { @leased.delete(id) }
        hold&.lose!(reason)
      rescue Exception => e # rubocop:disable Lint/RescueException -- reporting must never stop
        warn_once(e)
        sleep RETRY
      end
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def start_thread
      return if @thread&.alive?

      @thread = Thread.new do
        # Callers may hold interrupts deferred; this thread must stay killable.
        Thread.handle_interrupt(Object => :immediate) { run }
      end
      @thread.name = "mega_mutex renewer"
      @thread.report_on_exception = false
    end

    # The scheduler: hands what is due to the lanes and reports leases that
    # ran out. It waits on nothing but its ConditionVariable.
    def run
      loop do
        ready, lost, orphans = @mutex.synchronize { next_batch }
        lost.each { |hold| hold.lose!(RAN_OUT) }
        ready.each { |hold| lane_for(hold).push([:renew, hold]) }
        orphans.each { |hold| lane_for(hold).push([:clean_up, hold]) }
      rescue Exception => e # rubocop:disable Lint/RescueException -- renewal must never stop
        warn_once(e)
        sleep RETRY
      end
    end

    # Under @mutex: the holds due for renewal (now in flight), those whose
    # lease ran out first (no longer renewed), and the orphans due a look;
    # waits when there is nothing.
    def next_batch
      t = now
      ready = []
      lost = []
      @due.each do |hold, at|
        next if at > t

        # A hold in flight waits here with its lease's end as its time: seen
        # again only if the lane has not reported back by then.
        (hold.valid_until <= t ? lost : ready) << hold
      end
      lost.each { |hold| @due.delete(hold) }
      # In flight until the lane reports back; looked at again when its lease would end.
      ready.each { |hold| @due[hold] = hold.valid_until }
      orphans = @orphans.select { |_, (at, _, _)| at <= t }.keys
      orphans.each { |hold| @orphans[hold][0] = IN_FLIGHT }
      if ready.empty? && lost.empty? && orphans.empty?
        @wake_at = next_wake(t)
        @wakeup.wait(@mutex, @wake_at && @wake_at - t)
        @wake_at = 0 # awake: add need not signal, the loop looks again
      end
      [ready, lost, orphans]
    end

    # When the scheduler must wake next; nil to sleep until signalled. While
    # locks come and go it ticks every IDLE_TICK even with nothing to renew,
    # so taking a lock needs no signal (a lease is never shorter than a
    # second, renewed at a third of it: later than a tick); after IDLE_PARK
    # seconds without any lock it sleeps until the next one.
    def next_wake(t)
      next_at = [@due.each_value.min, @orphans.each_value.map(&:first).min].compact.min
      next_at = nil if next_at == IN_FLIGHT
      return [next_at, t + IDLE_TICK].min if next_at
      return t + IDLE_TICK if t - @active_at < IDLE_PARK

      nil
    end

    # The lane of the server that keeps `hold`'s key (memoised on the hold);
    # a session store's holds share one lane per pool (one server).
    def lane_for(hold)
      hold.lane ||= begin
        server = hold.session ? :session : begin
          hold.pool.with { |client| client._server_for(hold.key) }
        rescue StandardError
          :unknown # cannot even make a client now: a shared lane, tried again later
        end
        @mutex.synchronize { @lanes[[hold.pool, server]] ||= Lane.new(self, Array(server).join(":")) }
      end
    end

    def warn_once(error)
      return if @warned

      @warned = true
      Kernel.warn("MegaMutex renewer: #{error.class}: #{error.message} (carrying on)")
    rescue StandardError
      nil
    end
  end
end

at_exit { MegaMutex::Renewer.release_at_exit }
