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
      # @return [Module] this process's table (Native::MemoryTable, whose
      #   locks are [key, token, seconds_left, renewals] rows)
      def table
        Native::MemoryTable
      end

      # A client of the memory store, for the pool (one thread at a time).
      # @api private
      # @return [Native::Client]
      def new
        Native::Client.memory
      end
    end
  end
end
