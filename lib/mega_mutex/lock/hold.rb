# frozen_string_literal: true

# A lock's state on the server (Lock::Hold), shared by nested holders.

module MegaMutex
  class Lock
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
      # @return [Fiber] the fiber that took it: reentrancy is per fiber
      attr_reader :fiber
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
      # @return [Renewer::Lane, nil] the Ruby renewer's lane for its server (a quorum, a session store)
      attr_accessor :lane
      # @return [Boolean, nil] true when a take was cut short after its add was
      #   sent: the lock may be ours (set by the extension)
      attr_reader :outcome_unknown
      # @return [Array(String, Integer), nil] the server that keeps the key (memcached)
      attr_accessor :server
      # @return [Native::Lease, nil] its lease in the C renewer (memcached)
      attr_accessor :lease
      # @return [Integer, nil] the fencing token the store gave this take (set
      #   by the extension; stores without fencing tokens leave it nil)
      attr_reader :fencing_token
      # @return [Native::Client, nil] the client it was taken on, kept out of
      #   the pool until the release when taken by a block (Lock#synchronize),
      #   or always (a session store)
      attr_accessor :client
      # @return [Session, nil] a session store's connection it lives on
      #   (shared by the thread's holds), from the take to the release
      attr_accessor :session

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
        @fiber = Fiber.current
        @pid = MegaMutex.pid
        @depth = 0
        @version = nil
        @locked_at = nil
        @valid_until = nil
        @lane = nil
        @server = nil
        @lease = nil
        @client = nil
        @session = nil
        @outcome_unknown = nil
        @fencing_token = nil
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

        Instrumentation.instrument(Instrumentation::LOST, { id: @id, key: @key, reason: reason, fencing_token: @fencing_token }, @config.logger)
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
        # Best effort (Lock.log): a raising logger must not stop a release or the renewer.
        Lock.log(@config.logger, level) { message }
      end
    end
  end
end
