# frozen_string_literal: true

require "securerandom"
require_relative "session"
require_relative "lock/hold"
require_relative "lock/tokens"
require_relative "lock/taking"
require_relative "lock/releasing"

module MegaMutex
  # One named distributed lock, for code that cannot use a block.
  #
  # Reentrant per thread and fiber: while a thread holds an id (through any
  # Lock or with_distributed_mutex), taking the same id again in that thread
  # and fiber succeeds at once, and the lock is released when the outermost
  # holder unlocks. Another fiber of the thread is another holder: under a
  # Fiber.scheduler it waits for the release; without one (where it could
  # never wait: the holder cannot run meanwhile) it gets DeadlockError, as
  # Ruby's Mutex raises.
  #
  # A Lock object may be shared by threads (a constant used like a Mutex):
  # each thread's and fiber's calls count their own shares, and unlock may
  # be called from another thread.
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
    # The fiber-local slot that records a take in progress (its Hold) for
    # #_undo_take: per fiber, not per Lock - a Lock object shared by threads
    # had another thread's take overwrite it, and an interrupted grant was
    # then left held. lock_entry.c keeps an outer call's record across a
    # nested one.
    TAKING = :__mega_mutex_taking
    # Options accepted by {#initialize} and with_distributed_mutex.
    OPTIONS = %i[timeout ttl].freeze

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

    # @!method unlock
    #   Gives the lock back. Nested holds (reentrancy) release the lock on
    #   the server when the outermost one unlocks. Entered through C
    #   (ext/mega_mutex/lock_entry.c): an interrupt that lands inside it
    #   still finds the lock given back.
    #   @return [Boolean] true if this lock was held and is now given up;
    #     false if it was not held, or was found lost (expired or taken over)

    # The body of {#unlock}.
    # @api private
    def _unlock
      hold = @hold
      return false if hold.nil? || hold.pid != MegaMutex.pid

      Thread.handle_interrupt(DEFER) { unlock!(hold) }
    end
    private :_unlock

    # {#unlock} was cut short by an interrupt: gives back its share unless it
    # was given already (@depth is lowered by the masked release, all or
    # nothing). Called from ext/mega_mutex/lock_entry.c.
    # @param depth [Integer] @depth before the call
    def _unlock_cut_short(depth)
      Thread.handle_interrupt(DEFER) do
        hold = @hold
        unlock!(hold) if @depth == depth && !hold.nil? && hold.pid == MegaMutex.pid
      end
    rescue Error => e
      log(:warn) { "could not release #{@key} after an interrupted unlock: #{e.message}" }
    end
    private :_unlock_cut_short

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
      # This fiber's shares, not @depth: a Lock object shared by threads
      # counts another thread's hold there while this call waits for it.
      depth_before = own_depth
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
        begin
          @pin = false
          # @depth grows only once the lock is ours, even when an interrupt cut
          # lock() short right after: release exactly what this call took, with
          # interrupts deferred so the release itself is never cut short. This
          # is the cycle's one interrupt mask.
          Thread.handle_interrupt(DEFER) { release_after_block(finished) } if own_depth > depth_before
        ensure
          # An interrupt that landed before that mask was in place (where
          # Ruby checks for one there: under a TracePoint, at any event)
          # left the lock held: released now, and the interrupt goes on.
          Thread.handle_interrupt(DEFER) { release_after_block(false) } if own_depth > depth_before
        end
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

    private

    # This fiber's shares of this Lock: @depth while its hold is this
    # fiber's, 0 while another thread or fiber holds through it (a Lock
    # object may be shared: "unlock may be called from another thread"). What
    # a call compares before and after (#synchronize, lock_entry.c).
    def own_depth
      hold = @hold
      hold && hold.fiber.equal?(Fiber.current) ? @depth : 0
    end

    # Logs the block's message through config.logger. The block is yielded,
    # not captured: without a logger a call allocates nothing.
    def log(level)
      logger = @config.logger
      Lock.log(logger, level) { yield } unless logger.nil?
    end

    # Logs the block's message through `logger`, if any and if it logs
    # `level`. A logger that fails must not fail a lock call, a release or
    # the renewer: its errors are ignored, and interrupts wait (see LOGGING).
    # @api private
    # @param logger [Logger, nil]
    # @param level [Symbol] :debug, :info, :warn or :error
    # @yieldreturn [String] the message (asked only if it is logged)
    # @return [void]
    def self.log(logger, level)
      return if logger.nil?
      # A level the logger leaves out costs neither the message nor the mask
      # (Ruby 3.1 makes a Hash for each handle_interrupt).
      asks = LEVEL_ASKS[level]
      return if logger.respond_to?(asks) && !logger.public_send(asks)

      Thread.handle_interrupt(LOGGING) do
        logger.public_send(level) { "MegaMutex: #{yield}" }
      rescue StandardError
        nil
      end
    end
  end
end
