# frozen_string_literal: true

module MegaMutex
  # One connection of a session store (MariaDB: a lock lives as long as the
  # session that took it), as the locks of one thread share it.
  #
  # - A thread's holds on one pool share one session: MariaDB detects a
  #   deadlock only between sessions that wait while holding, so two
  #   threads that each hold one lock and wait for the other's get a
  #   DeadlockError instead of waiting for ever.
  # - The session stays out of the pool while it holds anything, and goes
  #   back when its last hold is released - never while it holds a lock
  #   (MariaDB counts re-takes within a session: a pooled session still
  #   holding a lock would grant it again to the next thread).
  # - One thread at a time uses its client ({#use}): the holder's takes and
  #   releases, the renewer's refreshes ({#try_use}, which skips a busy
  #   session: a session inside a request is not idle, so it cannot time out).
  # - A session whose request ended in an error is {#broken!}: closed, not
  #   pooled, once its last hold is gone (closing it frees what it held).
  # @api private
  class Session
    # @return [Native::Client]
    attr_reader :client
    # @return [Pool]
    attr_reader :pool

    class << self
      # The calling thread's session of `pool` if it holds locks on one, else
      # a new one (a client checked out of the pool).
      # @param pool [Pool]
      # @return [Session]
      def for(pool)
        registry(Thread.current)[pool] || new(pool, Thread.current)
      end

      # @return [Hash{Pool => Session}] a thread's sessions that hold locks; reset in a forked child
      def registry(thread)
        reg = thread.thread_variable_get(:mega_mutex_sessions)
        if reg.nil? || reg[:pid] != MegaMutex.pid
          reg = { pid: MegaMutex.pid, sessions: {} }
          thread.thread_variable_set(:mega_mutex_sessions, reg)
        end
        reg[:sessions]
      end
    end

    # @param pool [Pool]
    # @param thread [Thread] the thread whose locks it holds
    def initialize(pool, thread)
      @pool = pool
      @thread = thread
      @client = pool.checkout
      @mutex = Mutex.new
      @state = Mutex.new # @holds, @done, @client: a hold may be released by another thread
      @holds = []
      @broken = false
      @done = false
    end

    # Runs the block with the client to itself (waits for a refresh in flight).
    # @return the block's value
    def use(&block)
      @mutex.synchronize(&block)
    end

    # Runs the block unless the client is in use.
    # @return the block's value, or :busy
    def try_use
      return :busy unless @mutex.try_lock

      begin
        yield
      ensure
        @mutex.unlock
      end
    end

    # A take on this session is starting: it counts as a hold until {#forget}.
    # A session that went back to the pool meanwhile (its last hold released
    # by another thread after {Session.for} returned it) takes a client of
    # its own again: the one it gave back may be another thread's by now,
    # and MariaDB would grant that thread what this one takes.
    # @param hold [Lock::Hold]
    # @return [void]
    def adopt(hold)
      @state.synchronize do
        reopen if @done
        @holds << hold
        Session.registry(@thread)[@pool] = self
      end
    end

    # A hold is released, or its take did not take it: the session goes back
    # to the pool (or is closed, when broken) once it holds nothing.
    # @param hold [Lock::Hold]
    # @return [void]
    def forget(hold)
      @state.synchronize do
        @holds.delete_if { |h| h.equal?(hold) }
        finish if @holds.empty?
      end
    end

    # Its last request failed: close it once it holds nothing.
    # @return [void]
    def broken!
      @broken = true
    end

    # @return [Boolean]
    def broken?
      @broken
    end

    private

    # Under @state: a finished session made usable again, on a client of its
    # own (it holds nothing, so nothing is lost with the old one).
    def reopen
      Thread.handle_interrupt(Lock::DEFER) do
        @client = @pool.checkout
        @broken = false
        @done = false
      end
    end

    # Under @state.
    def finish
      return if @done

      @done = true
      reg = Session.registry(@thread)
      reg.delete(@pool) if reg[@pool].equal?(self)
      if @broken
        @client.close unless @client.closed? || @client.instance_variable_get(:@mega_mutex_pid) != MegaMutex.pid
      else
        @pool.checkin(@client)
      end
    end
  end
  private_constant :Session
end
