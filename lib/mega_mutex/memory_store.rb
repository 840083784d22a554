# frozen_string_literal: true

module MegaMutex
  # The lock store of the `:memory` backend, for test suites: MegaMutex's
  # semantics inside one process, with no memcached and no connection.
  #
  #   MegaMutex.configure { |config| config.backend = :memory }
  #
  # The store is written in C (ext/mega_mutex/store_memory.c) behind the same
  # store interface as memcached, so a suite runs the production lock loop,
  # reentrancy, renewal and interrupt handling: only where the locks are kept
  # differs. Threads exclude each other, locks are reentrant, timeouts (0, a
  # number, nil for ever) and leases work as with memcached: a lease that
  # nobody renews ends after its length, and a holder that finds its lease
  # gone gets {LockLostError}. `memcache_servers` is ignored.
  #
  # The locks live in one table per process, shared by every configuration
  # whose backend is `:memory`, so re-configuring keeps the locks held. Clear
  # it between examples with {.reset!}. A waiter waits in the store and is
  # woken by the release (or when the lease it waits on ends, or by
  # Thread#raise, Timeout or a signal); it does not poll, so
  # `backoff_min`/`backoff_max` are not used.
  #
  # After `fork` the child works on its own copy of the table: locks held at
  # the fork still look held in the child until their leases end there
  # (nobody renews them in the child), and nothing either process does is
  # seen by the other. The memory backend is no cross-process lock.
  #
  # An application only calls the class methods; the pool makes the clients.
  #
  # @example RSpec: every example starts with no lock held
  #   RSpec.configure do |config|
  #     config.before(:suite) { MegaMutex.configure { |c| c.backend = :memory } }
  #     config.before { MegaMutex::MemoryStore.reset! }
  #   end
  class MemoryStore
    # Longest key accepted, in bytes (memcached's limit, kept for parity).
    MAX_KEY = 250
    # Longest owner token accepted, in bytes.
    MAX_TOKEN = 200
    # Longest lease accepted, in seconds (30 days).
    MAX_TTL = 2_592_000

    # Whether the C store is in use: Native::Client.memory (client.c) makes
    # its clients, and the pool checks them out like connections (one per
    # thread at a time). Until both are there, the Ruby store below serves.
    # @api private
    NATIVE = Native::Client.respond_to?(:memory) && !Pool.private_method_defined?(:memory_store)

    class << self
      # Forgets every lock in this process's table (and undoes {.advance}).
      # Call it between examples, when no block is inside a lock: a holder
      # whose lock was cleared finds it gone at release ({LockLostError}, as
      # after a memcached restart). Waiters are woken and take the lock.
      # @return [nil]
      def reset!
        table.reset!
        nil
      end

      # Moves the lease clock forward by `seconds`, as if that much time had
      # passed for the leases (not for waits and timeouts, which stay real
      # time): a lease that nobody renewed ends. Lets a suite test lease
      # expiry without sleeping.
      #
      # A lease its holder is renewing is not ended: had the time really
      # passed, the renewer would have renewed it. A lease counts as being
      # renewed once its holder has renewed it (the renewer does so a third
      # of the way through lock_ttl) and for lock_ttl after each renewal. So
      # advance ends the locks of holders that crashed, stopped renewing or
      # belong to the parent of a forked child - and a lock taken less than
      # lock_ttl / 3 ago, not yet renewed (its holder then gets
      # {LockLostError}). To take a renewed lock away from a live holder,
      # use {.reset!}.
      # @param seconds [Numeric] non-negative, finite; at most 100 years in
      #   all between two {.reset!}s
      # @return [nil]
      # @raise [ArgumentError] for a negative, non-finite or non-real number
      def advance(seconds)
        unless seconds.is_a?(Numeric) && seconds.real? && seconds.to_f.finite? && seconds >= 0
          raise ArgumentError, "advance takes a non-negative number of seconds (got #{seconds.inspect})"
        end

        table.advance(seconds.to_f)
        nil
      end

      # The locks held now in this process's table.
      # @return [Hash{String => String}] key => the holder's token
      def locks
        table.locks.to_h { |key, token, _left, _renewals| [key, token] }
      end

      # @api private
      # @return [#reset!, #advance, #locks] this process's table:
      #   Native::MemoryTable, whose locks are
      #   [key, token, seconds_left, renewals] rows
      def table
        NATIVE ? Native::MemoryTable : RubyTable.current
      end
    end

    if NATIVE
      # A client of the C store, for the pool (one thread at a time).
      # @api private
      # @return [Native::Client]
      def self.new
        Native::Client.memory
      end
    end

    # ---- the Ruby store: serves until NATIVE (to be removed then) ----

    # One held lock.
    # @api private
    Entry = Struct.new(:token, :version, :expires_at, :renewals)

    # The process-wide lock table: entries by key, one mutex, and a
    # ConditionVariable per key that has waiters.
    # @api private
    class RubyTable
      @current = nil
      @create_mutex = Mutex.new

      # @return [RubyTable] this process's table (a child's own copy after fork)
      def self.current
        t = @current
        return t if t && t.pid == Process.pid

        # Ruby frees, in a forked child, the mutexes that other threads held.
        @create_mutex.synchronize do
          @current = @current.nil? ? new : @current.for_child if @current.nil? || @current.pid != Process.pid
          @current
        end
      end

      # @return [Integer] the process that owns this table
      attr_reader :pid

      def initialize(entries = {}, version = 0, offset = 0.0)
        @mutex = Mutex.new
        @entries = entries
        @waiting = {} # key => [ConditionVariable, number of waiters]
        @version = version
        @offset = offset
        @pid = Process.pid
      end

      # A copy for a forked child: the same locks, a fresh mutex (the
      # parent's may have been held by a thread that does not exist here).
      # @return [RubyTable]
      def for_child
        self.class.new(@entries.transform_values(&:dup), @version, @offset)
      end

      # Runs the block holding the table's mutex.
      def synchronize(&block)
        @mutex.synchronize(&block)
      end

      # The lease clock, in seconds: monotonic time plus {#advance}s.
      # @return [Float]
      def clock
        Process.clock_gettime(Process::CLOCK_MONOTONIC) + @offset
      end

      # @return [Entry, nil] the live entry for key; drops an expired one.
      #   Call holding the mutex.
      def live(key)
        entry = @entries[key]
        return entry if entry.nil? || entry.expires_at > clock

        @entries.delete(key)
        nil
      end

      # Takes key for token if it is free. Call holding the mutex.
      # @return [Integer, nil] the new entry's version, nil when held
      def take(key, token, ttl)
        return nil if live(key)

        @version += 1
        @entries[key] = Entry.new(token, @version, clock + ttl, 0)
        @version
      end

      # Removes key's entry and wakes its waiters. Call holding the mutex.
      def delete(key)
        @entries.delete(key)
        wake(key)
      end

      # Sleeps until key may be free: woken by a release, or when the
      # current lease ends, or after `limit` seconds (nil: no limit).
      # Spurious wake-ups happen; the caller re-checks. Call holding the mutex.
      def wait(key, limit)
        entry = @entries[key]
        ends_in = entry && (entry.expires_at - clock)
        timeout = [limit, ends_in].compact.min
        return if timeout && timeout <= 0

        cv, = @waiting[key] ||= [ConditionVariable.new, 0]
        @waiting[key][1] += 1
        begin
          cv.wait(@mutex, timeout)
        ensure
          slot = @waiting[key]
          slot[1] -= 1
          @waiting.delete(key) if slot[1].zero?
        end
      end

      # Moves the lease clock forward and wakes every waiter.
      def advance(seconds)
        synchronize do
          @offset += seconds
          @waiting.each_key { |key| wake(key) }
        end
      end

      # Forgets every lock and wakes every waiter.
      def reset!
        synchronize do
          @entries.clear
          @offset = 0.0
          @waiting.each_key { |key| wake(key) }
        end
      end

      # @return [Array<Array>] the live locks: [key, token, seconds_left, renewals]
      def locks
        synchronize do
          @entries.each_key.to_a.each { |key| live(key) }
          @entries.map { |key, e| [key, e.token.dup, e.expires_at - clock, e.renewals] }
        end
      end

      private

      def wake(key)
        slot = @waiting[key]
        slot&.first&.broadcast
      end
    end
    private_constant :RubyTable

    # A store over this process's table. Cheap: {Pool} makes one per
    # configuration.
    def initialize
      @closed = false
    end

    # Takes `key` for `token`, waiting up to `timeout` seconds (nil: for
    # ever; 0: one try). On success state's @version is set before an
    # interrupt can land, so the caller's `ensure` always sees what was taken.
    # @api private
    # @param state [Object] receives @version (taken), @attempts, @waited and,
    #   on timeout, @holder (the token seen last)
    # @param key [String]
    # @param token [String]
    # @param ttl [Integer] lease, seconds
    # @param timeout [Numeric, nil]
    # @param backoff_min [Numeric] checked, unused (waiters do not poll)
    # @param backoff_max [Numeric] checked, unused
    # @return [Boolean] true if taken, false on timeout
    def _acquire(state, key, token, ttl, timeout, backoff_min, backoff_max)
      check_key(key, MAX_KEY, "key")
      check_key(token, MAX_TOKEN, "token")
      ttl = check_ttl(ttl)
      timeout = seconds(timeout, "timeout", nil_ok: true)
      bmin = seconds(backoff_min, "backoff_min")
      bmax = seconds(backoff_max, "backoff_max")
      raise ArgumentError, "backoff bounds must satisfy 0 < min <= max" unless bmin.positive? && bmax >= bmin

      check_open
      key = key.b.freeze
      token = token.b.freeze
      start = now
      deadline = timeout && start + timeout
      attempts = 0
      table = RubyTable.current
      table.synchronize do
        loop do
          attempts += 1
          # Taking and recording are one step that no interrupt can split.
          taken = Thread.handle_interrupt(Object => :never) do
            version = table.take(key, token, ttl)
            if version
              state.instance_variable_set(:@version, version)
              state.instance_variable_set(:@attempts, attempts)
              state.instance_variable_set(:@waited, now - start)
            end
            !version.nil?
          end
          return true if taken

          remaining = deadline && deadline - now
          if remaining && remaining <= 0
            state.instance_variable_set(:@attempts, attempts)
            state.instance_variable_set(:@waited, now - start)
            state.instance_variable_set(:@holder, table.live(key)&.token&.dup)
            return false
          end
          # Under the caller's interrupt mask: Thread#raise, Timeout and
          # Ctrl-C end the wait (and nothing was taken).
          table.wait(key, remaining)
        end
      end
    end

    # Releases `key` if `token` holds it.
    # @api private
    # @param version [Integer, nil] what _acquire left in @version; nil: unknown
    # @return [Boolean] true if the lock was ours and is now free
    def _release(key, token, version)
      check_key(key, MAX_KEY, "key")
      check_key(token, MAX_TOKEN, "token")
      check_open
      table = RubyTable.current
      table.synchronize do
        entry = table.live(key)
        next false unless entry && entry.token == token && (!version.is_a?(Integer) || entry.version == version)

        table.delete(key)
        true
      end
    end

    # Renews `token`'s lease on `key` for `ttl` seconds from now.
    # @api private
    # @return [Boolean] true if still ours and renewed
    def _extend(key, token, ttl)
      check_key(key, MAX_KEY, "key")
      check_key(token, MAX_TOKEN, "token")
      ttl = check_ttl(ttl)
      check_open
      table = RubyTable.current
      table.synchronize do
        entry = table.live(key)
        next false unless entry && entry.token == token

        entry.expires_at = table.clock + ttl
        entry.renewals += 1
        true
      end
    end

    # @api private
    # @return [String, nil] the holder's token, nil when free
    def _read(key)
      check_key(key, MAX_KEY, "key")
      check_open
      table = RubyTable.current
      table.synchronize { table.live(key)&.token&.dup }
    end

    # @api private
    # @return [Array(String, Float, String), Array(nil, nil, String)] the
    #   holder's token, the seconds its lease has left, and "memory"
    def _describe(key)
      check_key(key, MAX_KEY, "key")
      check_open
      table = RubyTable.current
      table.synchronize do
        entry = table.live(key)
        entry ? [entry.token.dup, entry.expires_at - table.clock, "memory"] : [nil, nil, "memory"]
      end
    end

    # Removes `key`'s lock whoever holds it.
    # @api private
    # @return [Boolean] true if a lock was removed
    def _force_release(key)
      check_key(key, MAX_KEY, "key")
      check_open
      table = RubyTable.current
      table.synchronize do
        next false unless table.live(key)

        table.delete(key)
        true
      end
    end

    # There is no server: always raises.
    # @api private
    # @raise [Error]
    def _server_for(key)
      check_key(key, MAX_KEY, "key")
      raise Error, "the memory backend has no server (MegaMutex.configuration.backend is :memory)"
    end

    # Marks this store closed; the table and its locks stay.
    # @api private
    # @return [nil]
    def close
      check_open
      @closed = true
      nil
    end

    # @api private
    # @return [Boolean]
    def closed?
      @closed
    end

    # @return [String]
    def inspect
      "#<#{self.class.name}#{' closed' if @closed}>"
    end

    private

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def check_open
      raise Error, "MegaMutex client is closed" if @closed
    end

    def check_key(str, max, what)
      raise TypeError, "#{what} must be a String (got #{str.class})" unless str.is_a?(String)
      unless str.bytesize.between?(1, max) && str.b.match?(/\A[\x21-\x7e]+\z/n)
        raise ArgumentError, "#{what} must be 1 to #{max} bytes of printable ASCII without spaces"
      end
    end

    def check_ttl(ttl)
      raise TypeError, "ttl must be an Integer (got #{ttl.class})" unless ttl.is_a?(Integer)
      raise ArgumentError, "ttl must be 1 to #{MAX_TTL} seconds (got #{ttl})" unless ttl.between?(1, MAX_TTL)

      ttl
    end

    def seconds(value, what, nil_ok: false)
      return nil if value.nil? && nil_ok
      raise TypeError, "#{what} must be a number (got #{value.class})" unless value.is_a?(Numeric) && value.real?

      float = value.to_f
      raise ArgumentError, "#{what} must be a non-negative number" if float.nan? || float.negative?

      float.infinite? ? nil : float
    end
  end
end
