# frozen_string_literal: true

require "securerandom"
require "socket"

module MegaMutex
  # One named distributed lock, for code that cannot use a block.
  #
  # Reentrant per thread: while a thread holds an id (through any Lock or
  # with_distributed_mutex), taking the same id again in that thread succeeds
  # at once, and the lock is released when the outermost holder unlocks.
  #
  # @example
  #   lock = MegaMutex::Lock.new("nightly-report", timeout: 5)
  #   if lock.try_lock
  #     begin
  #       build_report
  #     ensure
  #       lock.unlock
  #     end
  #   end
  class Lock
    # Interrupt mask for bookkeeping that must not be cut in half.
    DEFER = { Object => :never }.freeze
    # Seconds added to lock_ttl on the wire (see Hold#wire_ttl).
    WIRE_MARGIN = 2
    # Options accepted by {#initialize} and with_distributed_mutex.
    OPTIONS = %i[timeout ttl].freeze

    # The server-side state of one acquisition, shared by nested holders.
    # @api private
    class Hold
      # @return [Object] the mutex id it was taken for (the first, for nested holds)
      attr_reader :id
      # @return [String] the memcached key
      attr_reader :key
      # @return [String] this acquisition's owner token (the value stored)
      attr_reader :token
      # @return [Pool] the connections it was taken through
      attr_reader :pool
      # @return [Thread] the thread that took it
      attr_reader :thread
      # @return [Integer] the process that took it
      attr_reader :pid
      # @return [Integer] lease length in seconds
      attr_reader :ttl
      # @return [Configuration] the configuration it was taken under
      attr_reader :config
      # @return [String, nil] why the lease was found lost, if it was
      attr_reader :lost_reason
      # @return [Integer] how many nested holders share it
      attr_accessor :depth
      # @return [Object, nil] the server's version of the item; set by the extension once taken
      attr_accessor :version
      # @return [Integer] take attempts made; set by the extension
      attr_accessor :attempts
      # @return [Float] seconds spent taking it; set by the extension
      attr_accessor :waited
      # @return [String, nil] the holder's token seen last, after a failed take
      attr_accessor :holder
      # @return [Float, nil] monotonic time at which it was taken
      attr_accessor :locked_at
      # @return [Float, nil] monotonic time until which the lease is known to
      #   last: taken or last renewed + ttl (set at take, kept by the renewer)
      attr_accessor :valid_until
      # @return [Renewer::Lane, nil] the Ruby renewer's lane for its server (memory backend)
      attr_accessor :lane
      # @return [Boolean, nil] true when a take was cut short after its add was
      #   sent: the lock may be ours (set by the extension)
      attr_reader :outcome_unknown
      # @return [Array(String, Integer), nil] the server that keeps the key (memcached)
      attr_accessor :server
      # @return [Native::Lease, nil] its lease in the C renewer (memcached)
      attr_accessor :lease

      # @param id [Object] the mutex id
      # @param key [String] the memcached key
      # @param token [String] the owner token to store
      # @param pool [Pool]
      # @param ttl [Integer] lease in seconds
      # @param config [Configuration]
      def initialize(id, key, token, pool, ttl, config)
        @id = id
        @key = key
        @token = token
        @pool = pool
        @ttl = ttl
        @config = config
        @thread = Thread.current
        @pid = Process.pid
        @depth = 0
        @version = nil
        @locked_at = nil
        @valid_until = nil
        @lane = nil
        @server = nil
        @lease = nil
        @outcome_unknown = nil
        @lost_reason = nil
      end

      # The expiry sent to memcached. Its clock ticks once a second, may lag
      # real time by up to a second and then jump (after a pause of the
      # server, or a late tick): lock_ttl + 2 keeps the lease at least
      # lock_ttl long through a jump of up to a second more than the tick.
      # @return [Integer]
      def wire_ttl
        @ttl + WIRE_MARGIN
      end

      # @return [Boolean] true once the lease was found gone or taken over,
      #   or ran out before a renewal got through (the C renewer's lease says
      #   so the moment it happens, whatever Ruby threads are doing)
      def lost?
        return true unless @lost_reason.nil?

        reason = @lease&.lost_reason
        return false if reason.nil?

        lose!(reason)
        true
      end

      # Marks the lease lost, logs it at error level and publishes
      # lost.mega_mutex. Called by the releasing thread or the renewer thread.
      def lose!(reason)
        return unless @lost_reason.nil?

        @lost_reason = reason
        log(:error, "lost lock #{@key} (lock_id: #{@token}): #{reason}")
        return unless Instrumentation.listening?(Instrumentation::LOST)

        Instrumentation.instrument(Instrumentation::LOST, { id: @id, key: @key, reason: reason }, @config.logger)
      rescue StandardError => e
        # A failing subscriber must not stop the renewer; the holder is told all the same.
        log(:warn, "a lost.mega_mutex subscriber failed: #{e.class}: #{e.message}")
      end

      # @return [Float] seconds since the lock was taken (0.0 if it was not)
      def held
        return 0.0 if @locked_at.nil?

        Process.clock_gettime(Process::CLOCK_MONOTONIC) - @locked_at
      end

      # Logs `message` through config.logger, if any.
      # @param level [Symbol] :debug, :info, :warn or :error
      # @param message [String]
      # @return [void]
      def log(level, message)
        @config.logger&.public_send(level) { "MegaMutex: #{message}" }
      rescue StandardError
        nil # logging is best effort: a raising logger must not stop a release or the renewer
      end
    end

    # @return [Object] the id this lock was made for
    attr_reader :id
    # @return [String] the memcached key
    attr_reader :key
    # @return [Numeric, nil] the wait limit used by {#lock}; nil waits forever
    attr_reader :timeout
    # @return [Integer] lease length in seconds
    attr_reader :ttl

    # @param id [String, Symbol, Integer] the mutex id
    # @param timeout [Numeric, nil] seconds {#lock} waits (default: config.default_timeout;
    #   nil waits forever; 0 tries once)
    # @param ttl [Integer] lease length in seconds (default: config.lock_ttl)
    # @raise [ArgumentError] for a bad id, timeout or ttl
    def initialize(id, timeout: (timeout_unset = true), ttl: nil)
      config = MegaMutex.configuration
      @id = id
      @key = Key.for(config.namespace, id)
      @timeout = timeout_unset ? config.default_timeout : Configuration.timeout_value(timeout, :timeout)
      @ttl = ttl.nil? ? config.lock_ttl : Configuration.ttl_value(ttl, :ttl)
      @config = config
      @pool = MegaMutex.pool
      @memory = config.backend == :memory
      @hold = nil
      @taking = nil
      @depth = 0
    end

    # @!method lock(timeout: @timeout)
    #   Takes the lock, waiting up to `timeout` seconds. A call that raises
    #   (TimeoutError, a server error, or an interrupt: Timeout, Thread#raise,
    #   Ctrl-C) leaves nothing held; the method is entered through C
    #   (ext/mega_mutex/lock_entry.c) so that no interrupt can land between
    #   the take and the return.
    #   @param timeout [Numeric, nil] overrides the lock's timeout
    #   @return [true]
    #   @raise [TimeoutError] when not obtained in time
    #   @raise [ConnectionError, ServerError]

    # @!method try_lock
    #   Takes the lock if it is free now; never waits. Like {#lock}, a call
    #   that raises leaves nothing held.
    #   @return [Boolean] true if taken

    # The body of {#lock}.
    # @api private
    def _lock(timeout: @timeout)
      timeout = Configuration.timeout_value(timeout, :timeout)
      return true if acquire(timeout)

      if Instrumentation.listening?(Instrumentation::TIMEOUT)
        Instrumentation.instrument(Instrumentation::TIMEOUT,
                                   { id: @id, key: @key, timeout: timeout, holder: @last_holder }, @config.logger)
      end
      raise TimeoutError.new(id: @id, timeout: timeout, holder: @last_holder)
    end
    private :_lock

    # The body of {#try_lock}.
    # @api private
    def _try_lock
      acquire(0)
    end
    private :_try_lock

    # Gives the lock back. Nested holds (reentrancy) release the lock on the
    # server when the outermost one unlocks.
    # @return [Boolean] true if this lock was held and is now given up;
    #   false if it was not held, or was found lost (expired or taken over)
    def unlock
      hold = @hold
      return false if hold.nil? || hold.pid != Process.pid

      Thread.handle_interrupt(DEFER) do
        @depth -= 1
        @hold = nil if @depth.zero?
        hold.depth -= 1
        next true if hold.depth.positive?

        Lock.holds(hold.thread).delete(hold.key)
        Renewer.current.remove(hold)
        released = begin
          hold.pool.with { |client| client._release(hold.key, hold.token, hold.version) }
        rescue ConnectionError, ServerError
          # Unreachable, or refused (a full -M server): removed by the
          # renewer once the server answers and accepts it again.
          Renewer.current.release_later(hold)
          raise
        end
        if released
          log(:debug) do
            "released #{hold.key} (lock_id: #{hold.token}), held #{(hold.held * 1000).round(1)} ms " \
              "after waiting #{(hold.waited * 1000).round(1)} ms (#{hold.attempts} attempt#{'s' unless hold.attempts == 1})"
          end
        else
          hold.lose!("it was gone or held by someone else at release (expired, evicted, flushed or server restarted)")
        end
        if Instrumentation.listening?(Instrumentation::RELEASE)
          Instrumentation.instrument(Instrumentation::RELEASE,
                                     { id: hold.id, key: hold.key, held: hold.held, lost: hold.lost? }, @config.logger)
        end
        released && !hold.lost?
      end
    end

    # @return [Boolean] true once this lock's lease was found lost while held
    #   (expired, evicted, flushed, or the server restarted): mutual exclusion
    #   may have been broken. Stays true after unlock.
    def lost?
      !@last_hold.nil? && @last_hold.lost?
    end

    # @return [Boolean] true while this Lock object holds the lock
    def owned?
      !@hold.nil? && @hold.pid == Process.pid && @depth.positive?
    end

    # Asks memcached whether anyone holds this lock.
    # @return [Boolean]
    def locked?
      !holder.nil?
    end

    # @return [String, nil] the current holder's token, read from memcached
    def holder
      @pool.with { |client| client._read(@key) }
    end

    # Runs the block holding the lock, and releases it when the block exits,
    # whether normally or by an exception.
    # @param timeout [Numeric, nil] overrides the lock's timeout
    # @yieldparam lock [Lock] this lock (blocks that take no argument work too)
    # @return the block's value
    # @raise [TimeoutError] when not obtained in time
    def synchronize(timeout: @timeout, &block)
      raise ArgumentError, "synchronize needs a block" unless block

      timeout = Configuration.timeout_value(timeout, :timeout)
      depth_before = @depth
      finished = false
      begin
        lock(timeout: timeout)
        result = block.arity.zero? ? block.call : block.call(self)
        finished = true
        result
      ensure
        # @depth grows only once the lock is ours, even when an interrupt cut
        # lock() short right after: release exactly what this call took, with
        # interrupts deferred so the release itself is never cut short.
        Thread.handle_interrupt(DEFER) { release_after_block(finished) } if @depth > depth_before
      end
    end

    # @return [String]
    def inspect
      "#<#{self.class.name} id=#{@id.inspect} key=#{@key.inspect} owned=#{owned?}>"
    end

    # The holds of a thread, by key; reset in a forked child.
    # @api private
    # @return [Hash{String => Hold}]
    def self.holds(thread = Thread.current)
      registry = thread.thread_variable_get(:mega_mutex_holds)
      if registry.nil? || registry[:pid] != Process.pid
        registry = { pid: Process.pid, holds: {} }
        thread.thread_variable_set(:mega_mutex_holds, registry)
      end
      registry[:holds]
    end

    # A fresh owner token: host, pid and 64 random bits, printable ASCII.
    # @api private
    # @return [String]
    def self.new_token
      "#{HOST}:#{Process.pid}:#{SecureRandom.hex(8)}"
    end

    HOST = Socket.gethostname.to_s.b.gsub(/[^\x21-\x7e]/n, "_")[0, 64].then { |h| h.empty? ? "host" : h }.freeze
    private_constant :HOST

    private

    # Undoes what an interrupted {#lock} or {#try_lock} took, so that a call
    # that raises leaves nothing held: an interrupt (Timeout, Thread#raise,
    # Ctrl-C) or an error that came after the server granted the lock but
    # before the call returned. A registered hold is given back through
    # {#unlock} (a nested one only loses its level); a grant the interrupt
    # kept from being registered is released on the server. A failed release
    # is handed to the renewer's clean-up and must not hide the interrupt.
    # Called from ext/mega_mutex/lock_entry.c when the body did not return.
    # @param depth [Integer] @depth before the call
    def _undo_take(depth)
      Thread.handle_interrupt(DEFER) { undo_take!(depth) }
    end

    def undo_take!(depth)
      taking = @taking
      @taking = nil
      if @depth > depth
        unlock
      elsif taking&.version && !Lock.holds(taking.thread)[taking.key].equal?(taking)
        release_unregistered(taking)
      elsif taking&.outcome_unknown
        Renewer.current.release_later(taking) # the add went out: it may have landed
      end
    rescue Error => e
      log(:warn) { "could not release #{@key} after an interrupted take: #{e.message}" }
    end

    def release_unregistered(hold)
      @pool.with { |client| client._release(hold.key, hold.token, hold.version) }
    rescue ConnectionError, ServerError
      Renewer.current.release_later(hold)
      raise
    end

    # @return [Boolean] taken (or already held by this thread)
    def acquire(timeout)
      holds = Lock.holds
      if (hold = holds[@key])
        Thread.handle_interrupt(DEFER) { adopt(hold) } # both depths or neither
        return true
      end

      hold = Hold.new(@id, @key, Lock.new_token, @pool, @ttl, @config)
      @taking = hold # undone by _undo_take if an interrupt lands before it is registered
      begin
        # Runs under the caller's interrupt mask: Timeout, Thread#raise and
        # Ctrl-C end the wait unless the caller deferred them. C sets
        # hold.version the moment the lock is ours, before any interrupt can
        # land; one landing after that is handled by _undo_take.
        @pool.with do |client|
          granted = client._acquire(hold, @key, hold.token, hold.ttl, timeout, @config.backoff_min, @config.backoff_max)
          # A memcached lease is renewed by the C renewer's lane for its server.
          hold.server = client._server_for(@key) if granted && !@memory
        end
      rescue ConnectionError, ServerError
        Renewer.current.release_later(hold) # its add may have landed, or still land
        raise
      end
      taken = !hold.version.nil?
      Thread.handle_interrupt(DEFER) { register(holds, hold) } if taken
      @taking = nil
      if taken
        if Instrumentation.listening?(Instrumentation::ACQUIRE)
          Instrumentation.instrument(Instrumentation::ACQUIRE,
                                     { id: @id, key: @key, wait: hold.waited, attempts: hold.attempts }, @config.logger)
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
    def register(holds, hold)
      hold.locked_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      hold.valid_until = hold.locked_at + hold.ttl
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

    # Unlock after the block; a release error must not hide the block's own.
    # A lease lost while the block ran raises LockLostError once the block has
    # finished (or is only logged, with config.on_lock_lost = :log).
    def release_after_block(finished)
      hold = @hold
      unlock
      return unless finished && @depth.zero? && hold&.lost? && @config.on_lock_lost == :raise

      raise LockLostError.new(id: @id, reason: hold.lost_reason)
    rescue LockLostError
      raise
    rescue Error => e
      if finished
        raise e.exception("#{e.message} (releasing #{@key} after the block ran to completion; the lock is " \
                          "removed as soon as the server takes the release, and frees itself within #{hold.wire_ttl} s anyway)")
      end

      log(:error) { "could not release #{@key} after the block failed: #{e.message}" }
    end

    # Logs the block's message through config.logger. The block is yielded,
    # not captured: without a logger a call allocates nothing.
    def log(level)
      logger = @config.logger
      return if logger.nil?

      logger.public_send(level) { "MegaMutex: #{yield}" }
    rescue StandardError
      nil # a logger that fails must not fail a lock call (see Hold#log)
    end
  end
end
