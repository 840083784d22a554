# frozen_string_literal: true

# Taking a lock (Lock#lock, #try_lock and #synchronize's take): on a pooled
# client or on the thread's session, registering the grant, and undoing a
# take that an interrupt or an error cut short.

module MegaMutex
  class Lock
    private

    # A session store's take (#acquire): on this thread's session of the
    # pool (one it already holds locks on, else a fresh one), which the hold
    # keeps until its release. A take that fails with an error closes the
    # session once it holds nothing (a deadlock, a timeout or an interrupt
    # leave it usable: the store gives back a grant that raced them).
    # @return [Hold] the take's state (its version set when taken)
    def take_on_session(timeout)
      session = Session.for(@pool)
      hold = Hold.new(@id, @key, Lock.new_token, @pool, @ttl, @config)
      hold.session = session
      Thread.current[TAKING] = hold # undone by _undo_take if anything cuts this call short from here
      begin
        session.adopt(hold)
        session.use do
          hold.client = session.client
          session.client._acquire(hold, @key, hold.token, hold.ttl, timeout, @config.backoff_min, @config.backoff_max)
        end
      rescue DeadlockError
        raise # the session is fine, and keeps the locks it holds
      rescue Error
        session.broken!
        MegaMutex.forked! if MegaMutex.pid != Process.pid
        raise
      ensure
        # Not taken (or an interrupt before C said so): the session owes it nothing.
        if hold.version.nil?
          hold.client = nil
          session.forget(hold)
        end
      end
      hold
    end

    # @return [Boolean] taken (or already held by this fiber)
    def acquire(timeout)
      holds = Lock.holds
      # A hold registered but not adopted (depth 0: a registration in
      # progress under a signal handler, or one cut short) is held by nobody
      # through it: never joined; this call takes from the store like any
      # other (which says who holds it).
      if (hold = holds[@key]) && hold.depth.positive?
        if hold.pid == Process.pid # the real pid: never adopt a parent's hold
          return adopt_own(hold) if hold.fiber.equal?(Fiber.current)

          # Another fiber of this thread holds it: not this fiber's to enter
          # (two fibers of one thread interleave, under a Fiber.scheduler at
          # every I/O). Wait for that fiber to give it back, then take it.
          timeout = wait_for_fiber(holds, timeout)
          return false if timeout == :timed_out
        else
          MegaMutex.forked!
          holds = Lock.holds
        end
      end

      # Taken by a block (#synchronize): the client stays with the hold until
      # the release, which is then one round trip on the connection that
      # knows the lock's version. Read once: a nested take does not pin.
      pin = @pin
      @pin = false
      return finish_take(holds, take_on_session(timeout), timeout) if @session

      client = @pool.checkout
      hold = nil
      begin
        hold = Hold.new(@id, @key, Lock.new_token, @pool, @ttl, @config)
        Thread.current[TAKING] = hold # undone by _undo_take if anything cuts this call short from here
        # Runs under the caller's interrupt mask: Timeout, Thread#raise and
        # Ctrl-C end the wait unless the caller deferred them. C sets
        # hold.version the moment the lock is ours, before any interrupt can
        # land; one landing after that is handled by _undo_take.
        if client._acquire(hold, @key, hold.token, hold.ttl, timeout, @config.backoff_min, @config.backoff_max)
          # A memcached lease is renewed by the C renewer's lane for its server.
          hold.server = @pool.server_for(client, @key) if @c_leases
          if pin
            hold.client = client
            @pinned = hold
          end
        end
      rescue ConnectionError, ServerError
        Renewer.current.release_later(hold) if hold # its add may have landed, or still land
        raise
      rescue Error
        # A client of the parent, refused by the extension before any I/O: a
        # fork nobody told us of (made from C). Seen now, so the next call
        # opens connections of this process's own.
        MegaMutex.forked! if MegaMutex.pid != Process.pid
        raise
      ensure
        # Back to the pool unless the hold keeps it: one or the other, at any
        # point an interrupt may land.
        @pool.checkin(client) unless hold&.client.equal?(client)
      end
      finish_take(holds, hold, timeout)
    end

    # A nested take in the fiber that holds the lock (reentrancy).
    # @return [true]
    def adopt_own(hold)
      # A session lock lives on one server: the same key held through
      # another server's pool (MySQLMutex's connection argument) is not
      # this lock, and adopting it would let a second holder in there.
      if hold.session && !hold.pool.equal?(@pool)
        raise Error, "this thread already holds #{@key} through another MySQL server's settings: " \
                     "a lock name can be held through one server at a time per thread"
      end

      Thread.handle_interrupt(DEFER) { adopt(hold) } # both depths or neither
      true
    end

    # Waits until no other fiber of this thread holds the key. Under a
    # Fiber.scheduler it sleeps through the scheduler (which runs the holder
    # meanwhile), with the lock's backoff; without one, the holder cannot
    # run until this fiber gives way, so a wait would never end: that is a
    # DeadlockError (as Ruby's Mutex raises), and a try (timeout 0) is
    # refused as for any other holder.
    # @return [Numeric, nil, :timed_out] the time left to wait (nil: for ever)
    def wait_for_fiber(holds, timeout)
      deadline = timeout && (Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout)
      pause = @config.backoff_min
      while (hold = holds[@key]) && hold.depth.positive? && !hold.fiber.equal?(Fiber.current)
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        if deadline && now >= deadline
          @last_holder = hold.token
          return :timed_out
        end
        unless Fiber.scheduler && !Fiber.current.blocking?
          raise DeadlockError.new("#{@key} is held by another fiber of this thread " \
                                  "(#{hold.fiber.alive? ? 'alive' : 'finished'}), which cannot run " \
                                  "while this one waits: no Fiber.scheduler", id: @id)
        end

        sleep(deadline ? [pause, deadline - now].min : pause)
        pause = [pause * 2, @config.backoff_max].min
      end
      deadline && [deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC), 0].max
    end

    # Registers a take that succeeded, or says why it did not.
    # @return [Boolean] taken
    def finish_take(holds, hold, timeout)
      taken = !hold.version.nil?
      register(holds, hold) if taken
      Thread.current[TAKING] = nil
      if taken
        if Instrumentation.listening?(Instrumentation::ACQUIRE)
          Instrumentation.instrument(Instrumentation::ACQUIRE,
                                     { id: @id, key: @key, wait: hold.waited, attempts: hold.attempts,
                                       fencing_token: hold.fencing_token }, @config.logger)
        end
      else
        @last_holder = hold.holder
        log(:debug) do
          "could not lock #{@key} within #{timeout}s (#{hold.attempts} attempt#{'s' unless hold.attempts == 1}): " \
            "held by #{@last_holder || 'unknown'}"
        end
      end
      taken
    end

    # Records a granted take: this thread's registry, this Lock, the renewer.
    # Not under an interrupt mask of its own (one Thread.handle_interrupt
    # per cycle is the release's): an interrupt or an error at any point of
    # it leaves the take recorded (TAKING), and #undo_grant takes back whatever was done.
    def register(holds, hold)
      hold.locked_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      # The lease as the store granted it (set by the extension): it counts
      # from the take, not from now - the thread may have waited long for the
      # GVL in between. A session's lock has no end of its own: it lasts
      # while the session does, which the renewer's refreshes check.
      hold.valid_until = @session ? Float::INFINITY : (hold.valid_until || hold.locked_at + hold.ttl)
      holds[@key] = hold
      adopt(hold)
      Renewer.current.add(hold)
    end

    def adopt(hold)
      hold.depth += 1
      @hold = hold
      @last_hold = hold
      @depth += 1
    end

    # Undoes what an interrupted {#lock} or {#try_lock} took, so that a call
    # that raises leaves nothing held: an interrupt (Timeout, Thread#raise,
    # Ctrl-C) or an error that came after the server granted the lock but
    # before the call returned. A grant of this call is undone however far
    # its registration got ({#register} runs under the caller's interrupt
    # mask, not a mask of its own); a reentrant take only loses its level. A
    # failed release is handed to the renewer's clean-up and must not hide
    # the interrupt. Called from ext/mega_mutex/lock_entry.c when the body
    # did not return.
    # @param depth [Integer] this fiber's shares before the call (#own_depth)
    def _undo_take(depth)
      Thread.handle_interrupt(DEFER) { undo_take!(depth) }
    end

    def undo_take!(depth)
      taking = Thread.current[TAKING]
      Thread.current[TAKING] = nil
      @pin = false
      if taking&.version
        undo_grant(taking, depth)
      elsif own_depth > depth
        unlock!(@hold) # a reentrant take, adopted in full (#adopt runs masked)
      elsif taking&.outcome_unknown
        Renewer.current.release_later(taking) # the add went out: it may have landed
      end
    rescue Error => e
      log(:warn) { "could not release #{@key} after an interrupted take: #{e.message}" }
    end

    # Takes back a grant whose registration an interrupt or an error cut
    # short, at any point of {#register}: out of the thread's registry and
    # this Lock, out of the renewer, then off the server (on the client it
    # was taken on, if kept).
    def undo_grant(hold, depth)
      holds = Lock.holds(hold.thread)
      holds.delete(hold.key) if holds[hold.key].equal?(hold)
      hold.depth = 0 # a fresh hold: nobody else adopted it yet
      @depth = depth
      @hold = nil if @hold.equal?(hold)
      @pinned = nil if @pinned.equal?(hold)
      Renewer.current.remove(hold)
      release_on_server(hold)
    end
  end
end
