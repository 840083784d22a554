# frozen_string_literal: true

module MegaMutex
  # Keeps held leases alive: one background thread per process extends every
  # lock it holds, owner-checked and atomically, a third of the way through
  # its lease, so a block may run far longer than lock_ttl while a crashed
  # holder's lock still frees itself within lock_ttl (+1 s server tick).
  #
  # The thread sleeps on a ConditionVariable (the GVL is released) and is
  # started on first use, and again in a forked child.
  # @api private
  class Renewer
    # Retry delay after a failed renewal (server unreachable), in seconds.
    RETRY = 0.2
    # While locks are being taken, the thread wakes at least this often
    # (seconds), so a new lock needs no wake-up call: below lock_ttl / 3 for
    # the shortest lease (1 s).
    IDLE_TICK = 0.25
    # Seconds without any lock after which the thread sleeps until signalled.
    IDLE_PARK = 5.0

    class << self
      # @return [Renewer] this process's renewer
      def current
        r = @current
        return r if r && r.pid == Process.pid

        @create_mutex ||= Mutex.new
        @create_mutex.synchronize do
          @current = new if @current.nil? || @current.pid != Process.pid
          @current
        end
      end
    end

    attr_reader :pid

    def initialize
      @pid = Process.pid
      @mutex = Mutex.new
      @wakeup = ConditionVariable.new
      @due = {}     # Lock::Hold => monotonic time of its next renewal
      @orphans = {} # Lock::Hold => [next try, first answer or nil, give up at]
      @thread = nil
      @wake_at = nil # when the thread will wake by itself; nil: only if signalled
      @active_at = now # when a lock was last taken
    end

    # Takes over a token whose take or release failed with a connection
    # error: the server may still apply that add when it recovers (a paused
    # server queues it), or still hold the lock the release could not
    # remove, leaving a lock nobody holds until its lease runs out. The
    # renewer removes it as soon as the server answers again.
    # @param hold [Lock::Hold] the failed take or release (not registered)
    def release_later(hold)
      @mutex.synchronize do
        @orphans[hold] = [now + RETRY, nil, now + hold.wire_ttl + 1]
        start_thread
        @wakeup.signal
      end
    end

    # Starts renewing `hold` every ttl/3 seconds.
    # @param hold [Lock::Hold]
    def add(hold)
      @mutex.synchronize do
        @active_at = now
        due = @active_at + hold.ttl / 3.0
        @due[hold] = due
        start_thread
        # The thread wakes at @wake_at anyway; a signal (a thread switch on
        # every lock taken) is only needed when that is too late.
        @wakeup.signal if @wake_at.nil? || @wake_at > due
      end
    end

    # Stops renewing `hold` (before it is released).
    def remove(hold)
      @mutex.synchronize { @due.delete(hold) }
    end

    # @return [Integer] holds being renewed (for tests)
    def size
      @mutex.synchronize { @due.size }
    end

    private

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

    def run
      loop do
        due, orphans = @mutex.synchronize do
          t = now
          ready = @due.select { |_, at| at <= t }.keys
          lost = @orphans.select { |_, (at, _, _)| at <= t }.keys
          if ready.empty? && lost.empty?
            @wake_at = next_wake(t)
            @wakeup.wait(@mutex, @wake_at && @wake_at - t)
            @wake_at = 0 # awake: add need not signal, the loop looks again
          end
          [ready, lost]
        end
        due.each { |hold| renew(hold) }
        orphans.each { |hold| clean_up(hold) }
      end
    end

    # When the thread must wake next; nil to sleep until signalled. While
    # locks come and go it ticks every IDLE_TICK even with nothing to renew,
    # so taking a lock needs no signal (a lease is never shorter than a
    # second, renewed at a third of it: later than a tick); after IDLE_PARK
    # seconds without any lock it sleeps until the next one.
    def next_wake(t)
      next_at = (@due.values + @orphans.values.map(&:first)).min
      return [next_at, t + IDLE_TICK].min if next_at
      return t + IDLE_TICK if t - @active_at < IDLE_PARK

      nil
    end

    # Removes an orphaned take (or a lock whose release failed) if it is
    # there; gives up once its lease is over, or once someone else holds the
    # key. A request may land late - queued in a paused server, or in a
    # connection that failed - so an empty answer is checked again: every
    # RETRY seconds for the first second after the server answered, then
    # every second until the lease would have ended anyway.
    def clean_up(hold)
      holder = hold.pool.with { |client| client._read(hold.key) }
      done = if holder == hold.token
               hold.pool.with { |client| client._release(hold.key, hold.token, nil) }
               hold.log(:info, "removed #{hold.key} (lock_id: #{hold.token}), left by a request that had failed")
               true
             else
               !holder.nil?
             end
      @mutex.synchronize do
        _, answered, give_up = @orphans[hold]
        answered ||= now
        if done || now > give_up
          @orphans.delete(hold)
        else
          @orphans[hold] = [now + (now > answered + 1 ? 1.0 : RETRY), answered, give_up]
        end
      end
    rescue Error
      @mutex.synchronize do
        entry = @orphans[hold]
        if entry.nil? || now > entry[2] then @orphans.delete(hold) else entry[0] = now + RETRY end
      end
    end

    def renew(hold)
      still_ours = hold.pool.with { |client| client._extend(hold.key, hold.token, hold.wire_ttl) }
      lost = @mutex.synchronize do
        next false unless @due.key?(hold) # released meanwhile: nothing to say

        if still_ours
          @due[hold] = now + hold.ttl / 3.0
          false
        else
          @due.delete(hold)
          true
        end
      end
      # Outside the mutex: lose! logs and publishes lost.mega_mutex, whose
      # subscribers may be slow or take locks themselves.
      hold.lose!("its lease was not found when renewing (expired, evicted, flushed or server restarted)") if lost
    rescue Error => e
      hold.log(:warn, "could not renew #{hold.key}: #{e.message}")
      @mutex.synchronize { @due[hold] = now + RETRY if @due.key?(hold) }
    end
  end
end
