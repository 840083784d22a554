# frozen_string_literal: true

require "securerandom"
require "socket"
require_relative "session"

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
    # Interrupt mask while a logger or a subscriber runs, whose errors are
    # rescued: Thread#raise and Timeout raise StandardErrors, and one landing
    # there would be taken for the logger's and swallowed. They are
    # delivered once it returns; Interrupt and SignalException stay immediate.
    LOGGING = { StandardError => :never }.freeze
    # Each level's question to a logger (Logger#debug? and the like).
    LEVEL_ASKS = { debug: :debug?, info: :info?, warn: :warn?, error: :error? }.freeze
    private_constant :LEVEL_ASKS
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
        logger = @config.logger
        return if logger.nil?

        # Logging is best effort: a raising logger must not stop a release
        # or the renewer. Interrupts wait (see LOGGING).
        Thread.handle_interrupt(LOGGING) do
          logger.public_send(level) { "MegaMutex: #{message}" }
        rescue StandardError
          nil
        end
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
    # @param _store [Array(Configuration, Pool), nil] (private) another
    #   configuration and its pool than MegaMutex's, for the
    #   distributed_mutex drop-in's connection argument
    # @raise [ArgumentError] for a bad id, timeout or ttl
    def initialize(id, timeout: (timeout_unset = true), ttl: nil, _store: nil)
      config = _store ? _store.first : MegaMutex.configuration
      @id = id
      @key = Key.cached(config.namespace, id)
      @timeout = timeout_unset ? config.default_timeout : Configuration.timeout_value(timeout, :timeout)
      @ttl = ttl.nil? ? config.lock_ttl : Configuration.ttl_value(ttl, :ttl)
      @config = config
      @pool = _store ? _store.last : MegaMutex.pool
      store = config.store
      @c_leases = store.c_leases
      @session = store.session
      @hold = nil
      @taking = nil
      @depth = 0
      @pin = false
      @pinned = nil
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
      return false if hold.nil? || hold.pid != MegaMutex.pid

      Thread.handle_interrupt(DEFER) { unlock!(hold) }
    end

    # @return [Boolean] true once this lock's lease was found lost while held
    #   (expired, evicted, flushed, or the server restarted): mutual exclusion
    #   may have been broken. Stays true after unlock.
    def lost?
      !@last_hold.nil? && @last_hold.lost?
    end

    # A number that grows with every new holder of this id, for the
    # resource the lock protects: it refuses a write that carries a smaller
    # token than one it has seen, so a holder that was paused past its lease
    # cannot overwrite its successor's work (see the README's "Fencing
    # tokens"). Kept after unlock, like {#lost?}.
    # @return [Integer, nil] the token of this Lock's latest take, or nil when
    #   nothing was taken yet or the backend gives none
    def fencing_token
      @last_hold&.fencing_token
    end

    # @return [Boolean] true while this Lock object holds the lock
    def owned?
      !@hold.nil? && @hold.pid == MegaMutex.pid && @depth.positive?
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
    # whether normally or by an exception. The connection the lock was taken
    # on stays with it while the block runs, and the release goes through it
    # (one round trip, whatever other threads do meanwhile); one connection
    # per block being run, then, back to the pool at the release.
    # @param timeout [Numeric, nil] overrides the lock's timeout
    # @yieldparam lock [Lock] this lock (blocks that take no argument work too)
    # @return the block's value
    # @raise [TimeoutError] when not obtained in time
    def synchronize(timeout: (timeout_unset = true), &block)
      raise ArgumentError, "synchronize needs a block" unless block

      timeout = Configuration.timeout_value(timeout, :timeout) unless timeout_unset
      depth_before = @depth
      finished = false
      begin
        # A lock taken here keeps the client it was taken on until the
        # release below: one round trip, not two (see #acquire).
        @pin = true
        # Without a keyword, lock makes no Hash for its arguments.
        timeout_unset ? lock : lock(timeout: timeout)
        @pin = false
        result = block.arity.zero? ? block.call : block.call(self)
        finished = true
        result
      ensure
        @pin = false
        # @depth grows only once the lock is ours, even when an interrupt cut
        # lock() short right after: release exactly what this call took, with
        # interrupts deferred so the release itself is never cut short. This
        # is the cycle's one interrupt mask.
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
      if registry.nil? || registry[:pid] != MegaMutex.pid
        registry = { pid: MegaMutex.pid, holds: {} }
        thread.thread_variable_set(:mega_mutex_holds, registry)
      end
      registry[:holds]
    end

    HOST = Socket.gethostname.to_s.b.gsub(/[^\x21-\x7e]/n, "_")[0, 64].then { |h| h.empty? ? "host" : h }.freeze
    private_constant :HOST
    # The two hex digits of each byte value, frozen: appended to a String,
    # they make no new object.
    HEX = Array.new(256) { |byte| format("%02x", byte).freeze }.freeze
    private_constant :HEX
    # 2**32: each half of a token's 64 random bits is drawn below it (a Fixnum, not a Bignum).
    HALF = 1 << 32
    private_constant :HALF

    # A fresh owner token: host, pid and 64 random bits as 16 hex digits,
    # printable ASCII - one String. The bits come from a generator of this
    # process's own, seeded from the system's (Random.new) and seeded again
    # in a forked child, so that a child never repeats its parent's tokens
    # (nor does srand in the application touch them).
    # @api private
    # @return [String]
    def self.new_token
      prefix, random = @token_source
      high = random.rand(HALF)
      low = random.rand(HALF)
      prefix.dup << HEX[high >> 24] << HEX[(high >> 16) & 255] << HEX[(high >> 8) & 255] << HEX[high & 255] <<
        HEX[low >> 24] << HEX[(low >> 16) & 255] << HEX[(low >> 8) & 255] << HEX[low & 255]
    end

    # In a forked child (MegaMutex.forked!): the token's pid and random
    # source start again.
    # @api private
    # @param pid [Integer] this process's
    # @return [void]
    def self.forked!(pid = MegaMutex.pid)
      @token_source = ["#{HOST}:#{pid}:".b.freeze, Random.new].freeze
    end
    forked!(Process.pid)

    private

    # Undoes what an interrupted {#lock} or {#try_lock} took, so that a call
    # that raises leaves nothing held: an interrupt (Timeout, Thread#raise,
    # Ctrl-C) or an error that came after the server granted the lock but
    # before the call returned. A grant of this call is undone however far
    # its registration got ({#register} runs under the caller's interrupt
    # mask, not a mask of its own); a reentrant take only loses its level. A
    # failed release is handed to the renewer's clean-up and must not hide
    # the interrupt. Called from ext/mega_mutex/lock_entry.c when the body
    # did not return.
    # @param depth [Integer] @depth before the call
    def _undo_take(depth)
      Thread.handle_interrupt(DEFER) { undo_take!(depth) }
    end

    def undo_take!(depth)
      taking = @taking
      @taking = nil
      @pin = false
      if taking&.version
        undo_grant(taking, depth)
      elsif @depth > depth
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

    # The release proper (see {#unlock}); runs with interrupts deferred.
    # @return [Boolean]
    def unlock!(hold)
      @depth -= 1
      @hold = nil if @depth.zero?
      hold.depth -= 1
      return true if hold.depth.positive?

      Lock.holds(hold.thread).delete(hold.key)
      Renewer.current.remove(hold)
      released = release_on_server(hold)
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
                                   { id: hold.id, key: hold.key, held: hold.held, lost: hold.lost?,
                                     fencing_token: hold.fencing_token }, @config.logger)
      end
      released && !hold.lost?
    end

    # Removes `hold` from the server: on the client it was taken on when a
    # block kept it (one round trip: its version is known to that
    # connection), which then goes back to the pool; else on any client of
    # the pool. A release that fails (unreachable, or refused by a full -M
    # server) is handed to the renewer, which removes the lock once the
    # server answers and accepts it again.
    # @return [Boolean] true if removed, false if it was not ours any more
    def release_on_server(hold)
      return release_on_session(hold) if hold.session

      client = hold.client
      return hold.pool.with { |c| c._release(hold.key, hold.token, hold.version) } if client.nil?

      begin
        client._release(hold.key, hold.token, hold.version)
      ensure
        hold.client = nil
        hold.pool.checkin(client)
      end
    rescue Error
      # Unreachable, refused - or a client that cannot be used (closed by a
      # configure, in use): the clean-up removes the lock through another
      # client once the server takes it. Never left for the whole lease.
      Renewer.current.release_later(hold)
      raise
    end

    # A session store's release: on the session the lock was taken on (it
    # lives there and nowhere else), serialised with the renewer's refreshes.
    # A session that fails here has ended, and the lock with it: reported
    # as lost (false), and the session is closed once it holds nothing.
    # @return [Boolean] true if released, false if it was not ours any more
    def release_on_session(hold)
      session = hold.session
      begin
        session.use { hold.client._release(hold.key, hold.token, hold.version) }
      rescue ConnectionError, ServerError => e
        session.broken!
        log(:warn) { "releasing #{hold.key}: #{e.message}" }
        false
      ensure
        hold.client = nil
        session.forget(hold)
      end
    end

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
      @taking = hold # undone by _undo_take if anything cuts this call short from here
      begin
        session.adopt(hold)
        session.use do
          hold.client = session.client
          session.client._acquire(hold, @key, hold.token, hold.ttl, timeout, @config.backoff_min, @config.backoff_max)
        end
      rescue ServerError => e
        raise DeadlockError.new(e.message, id: @id) if e.message.start_with?(MYSQL_DEADLOCK)

        session.broken!
        raise
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

    # The message a deadlock's ServerError starts with (store_mariadb.h).
    MYSQL_DEADLOCK = "MariaDB deadlock"
    private_constant :MYSQL_DEADLOCK

    # @return [Boolean] taken (or already held by this thread)
    def acquire(timeout)
      holds = Lock.holds
      if (hold = holds[@key])
        # The real pid, on this rare path only: a process forked from C
        # (outside Process._fork and Process.daemon) must never adopt a hold
        # of its parent's, which would let two holders in.
        if hold.pid == Process.pid
          # A session lock lives on one server: the same key held through
          # another server's pool (MySQLMutex's connection argument) is not
          # this lock, and adopting it would let a second holder in there.
          if hold.session && !hold.pool.equal?(@pool)
            raise Error, "this thread already holds #{@key} through another MySQL server's settings: " \
                         "a lock name can be held through one server at a time per thread"
          end

          Thread.handle_interrupt(DEFER) { adopt(hold) } # both depths or neither
          return true
        end

        MegaMutex.forked!
        holds = Lock.holds
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
        @taking = hold # undone by _undo_take if anything cuts this call short from here
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

    # Registers a take that succeeded, or says why it did not.
    # @return [Boolean] taken
    def finish_take(holds, hold, timeout)
      taken = !hold.version.nil?
      register(holds, hold) if taken
      @taking = nil
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
    # it leaves @taking set, and #undo_grant takes back whatever was done.
    def register(holds, hold)
      hold.locked_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      # A session's lock has no end of its own: it lasts while the session
      # does, which the renewer's refreshes check.
      hold.valid_until = @session ? Float::INFINITY : hold.locked_at + hold.ttl
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
    # finished (or is only logged, with config.on_lock_lost = :log). Runs with
    # interrupts deferred (#synchronize).
    def release_after_block(finished)
      hold = @hold
      unlock!(hold) unless hold.nil? || hold.pid != MegaMutex.pid
      # No early `return`: one through this method's `ensure` costs an object.
      if finished && @depth.zero? && hold&.lost? && @config.on_lock_lost == :raise
        raise LockLostError.new(id: @id, reason: hold.lost_reason)
      end
    rescue LockLostError
      raise
    rescue Error => e
      if finished
        raise e.exception("#{e.message} (releasing #{@key} after the block ran to completion; the lock is " \
                          "removed as soon as the server takes the release, and frees itself within #{hold.wire_ttl} s anyway)")
      end

      log(:error) { "could not release #{@key} after the block failed: #{e.message}" }
    ensure
      unpin if @depth.zero?
    end

    # The block that pinned a client is over but the lock lives on (another
    # holder nested in it still holds it): the client goes back to the pool,
    # and that holder's release takes any.
    def unpin
      hold = @pinned
      return if hold.nil?

      @pinned = nil
      client = hold.client
      return if client.nil? # released, and given back already

      hold.client = nil
      hold.pool.checkin(client)
    end

    # Logs the block's message through config.logger. The block is yielded,
    # not captured: without a logger a call allocates nothing.
    def log(level)
      logger = @config.logger
      return if logger.nil?
      # A level the logger leaves out costs neither the message nor the mask
      # (Ruby 3.1 makes a Hash for each handle_interrupt).
      asks = LEVEL_ASKS[level]
      return if logger.respond_to?(asks) && !logger.public_send(asks)

      # A logger that fails must not fail a lock call; interrupts wait (see LOGGING).
      Thread.handle_interrupt(LOGGING) do
        logger.public_send(level) { "MegaMutex: #{yield}" }
      rescue StandardError
        nil
      end
    end
  end
end
