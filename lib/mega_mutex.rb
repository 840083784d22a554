# frozen_string_literal: true

# MegaMutex: a distributed mutex for Ruby processes on many machines, kept in
# memcached. Include the module and wrap a critical section:
#
#   class WidgetMaker
#     include MegaMutex
#     def ensure_just_enough_things
#       with_distributed_mutex("WidgetMaker Mutex ID") { make_more_widgets unless enough_widgets? }
#     end
#   end
#
# The lock logic is a C extension over libmemcached (ext/mega_mutex); this
# file is the public API: configure, with_distributed_mutex, get_current_lock.
require "mega_mutex/version"
require "mega_mutex/errors"
require "mega_mutex/mega_mutex"
require "mega_mutex/key"
require "mega_mutex/configuration"
require "mega_mutex/pool"
require "mega_mutex/renewer"
require "mega_mutex/instrumentation"
require "mega_mutex/lock"

module MegaMutex
  @setup_mutex = Mutex.new
  @configuration = nil
  @pool = nil
  @pid = Native.pid

  # Tells MegaMutex at once that this is a forked child. Ruby 3.1's
  # Process._fork is what Kernel#fork, Process.fork and IO.popen("-") call;
  # Process.daemon forks without it, so it is hooked too. A fork made from C
  # by another extension, outside both, is seen by {MegaMutex.pid} itself.
  # @api private
  module ForkHook
    # @return [Integer] the child's pid in the parent, 0 in the child
    def _fork
      pid = super
      MegaMutex.forked! if pid.zero?
      pid
    end

    # @return [Integer] 0, in the daemon (the parents exit inside)
    def daemon(*)
      result = super
      MegaMutex.forked!
      result
    end
  end

  class << self
    # This process's id. The hot path asks often, and getpid is a system
    # call: it comes from the extension's cache (ext/mega_mutex/pid.c), which
    # a pthread_atfork handler keeps right in every child, one forked from C
    # too - where Ruby's fork hooks saw nothing, so the child still had its
    # parent's pid, released the parent's locks through its own connections
    # and made its parent's tokens. A pid that changed is a fork: the
    # child's start ({forked!}) runs before the pid is returned.
    # @api private
    # @return [Integer]
    def pid
      pid = Native.pid
      forked! if pid != @pid
      pid
    end

    # Called in a forked child, before anything else runs in it: the pid and
    # what is made per process (the owner tokens' prefix and random source)
    # start again. The parent's holds, connections and renewer are left
    # alone (each checks the pid).
    # @api private
    # @return [void]
    def forked!
      @pid = Native.pid
      Lock.forked!
    end
    # Changes the settings. The block gets a copy of the current
    # configuration; it takes effect only if the block finishes and every
    # setting is valid, so a failed configure changes nothing.
    # @yieldparam config [Configuration]
    # @return [Configuration] the configuration now in force
    # @raise [ArgumentError] naming the bad setting
    def configure
      config = configuration.dup
      yield config if block_given?
      config.validate!
      config.freeze
      @setup_mutex.synchronize do
        old_pool = @pool
        @configuration = config
        @pool = Pool.new(config)
        old_pool&.close
      end
      config
    end

    # @return [Configuration] the settings in force (frozen)
    def configuration
      @configuration || @setup_mutex.synchronize { @configuration ||= Configuration.new.validate!.freeze }
    end

    # Back to the defaults (and ENV["MEMCACHE_SERVERS"]); mostly for tests.
    # @return [Configuration]
    def reset_configuration!
      @setup_mutex.synchronize do
        @pool&.close
        @pool = nil
        @configuration = nil
      end
      configuration
    end

    # @api private
    # @return [Pool] connections for the configuration in force
    def pool
      @pool || @setup_mutex.synchronize { @pool ||= Pool.new(configuration) }
    end

    # The holder's token for `id`, or nil when nobody holds it.
    # @param id [String, Symbol, Integer]
    # @return [String, nil]
    # @raise [ArgumentError] for a bad id
    # @raise [ConnectionError] when memcached cannot be reached
    def get_current_lock(id)
      key = Key.for(configuration.namespace, id)
      pool.with { |client| client._read(key) }
    end
  end

  # Runs the block while holding the distributed lock named `id`, and returns
  # the block's value. Only one process (and one thread) anywhere runs a
  # block for the same id at a time; the others wait their turn.
  #
  # Also callable as MegaMutex.with_distributed_mutex, and under the
  # original gem's other name, with_cross_process_mutex.
  #
  # @param id [String, Symbol, Integer] names the lock; any bytes, any length
  # @param options [Hash, nil] the original gem's positional form: { timeout: 1 }
  # @param timeout [Numeric, nil] seconds to wait (default config.default_timeout;
  #   nil waits forever; 0 tries once)
  # @param ttl [Integer] lease length in seconds (default config.lock_ttl)
  # @yieldparam lock [Lock] the lock held (optional)
  # @return the block's value
  # @raise [TimeoutError] "Failed to obtain a lock within N seconds."
  # @raise [ConnectionError] when memcached cannot be reached
  # @raise [LockLostError] after the block, if its lease was lost while it ran
  # @raise [ArgumentError] for a bad id or option (an unknown keyword is
  #   named by Ruby: "unknown keyword: :tiemout"), or no block
  def with_distributed_mutex(id, options = nil, timeout: UNSET, ttl: UNSET, &block)
    # block_given?, not `block`: reading the block would make a Proc here;
    # passed on with &block it is not (Lock#synchronize makes the one Proc).
    # Named keywords, not **kwargs: those make a Hash on every call.
    raise ArgumentError, "with_distributed_mutex needs a block" unless block_given?

    if options.nil? && UNSET.equal?(timeout) && UNSET.equal?(ttl) # the common call
      return Lock.new(id).synchronize(&block)
    end

    kwargs = {}
    kwargs[:timeout] = timeout unless UNSET.equal?(timeout)
    kwargs[:ttl] = ttl unless UNSET.equal?(ttl)
    opts = MegaMutex.merge_options(options, kwargs)
    Lock.new(id, **opts).synchronize(&block)
  end
  alias with_cross_process_mutex with_distributed_mutex

  # "Skip if busy": runs the block only if the lock named `id` can be had —
  # at once by default — and says whether it ran. For jobs that should run
  # only when nobody else is running them (cron, ActiveJob), without a
  # rescue.
  #
  # A server that cannot be reached or refuses is not "busy": that raises, as
  # with_distributed_mutex does, so a job does not stop running unnoticed
  # while memcached is down. A TimeoutError raised inside the block (by
  # another lock it takes) propagates too.
  #
  # Also callable as MegaMutex.with_distributed_mutex_if_free.
  #
  # @example
  #   ran = with_distributed_mutex_if_free("nightly-report") { build_report }
  #   logger.info("nightly report running elsewhere, skipped") unless ran
  #
  # @param id [String, Symbol, Integer] names the lock; any bytes, any length
  # @param options [Hash, nil] positional options, as for with_distributed_mutex
  # @option kwargs [Numeric, nil] :timeout seconds to wait before giving up
  #   (default 0: one try; nil waits forever)
  # @option kwargs [Integer] :ttl lease length in seconds (default config.lock_ttl)
  # @yieldparam lock [Lock] the lock held (optional)
  # @return [Boolean] true if the block ran (in this thread, now); false if
  #   the lock was held by someone else, and the block did not run
  # @raise [ConnectionError, ServerError] when memcached cannot be used
  # @raise [LockLostError] after the block, if its lease was lost while it ran
  # @raise [ArgumentError] for a bad id or option, or no block
  def with_distributed_mutex_if_free(id, options = nil, **kwargs, &block)
    raise ArgumentError, "with_distributed_mutex_if_free needs a block" unless block

    opts = MegaMutex.merge_options(options, kwargs)
    opts[:timeout] = 0 unless opts.key?(:timeout)
    entered = false
    Lock.new(id, **opts).synchronize do |lock|
      entered = true
      block.arity.zero? ? yield : yield(lock)
    end
    true
  rescue TimeoutError
    raise if entered # from inside the block: not ours to read as "busy"

    false
  end

  # @api private
  # @return [Hash] keyword options for Lock.new
  def self.merge_options(options, kwargs)
    unless options.nil? || options.is_a?(Hash)
      raise ArgumentError, "options must be a Hash like { timeout: 1 } (got #{options.class})"
    end

    opts = (options || {}).merge(kwargs)
    unknown = opts.keys - Lock::OPTIONS
    unless unknown.empty?
      raise ArgumentError, "unknown option(s) #{unknown.map(&:inspect).join(', ')} (known: #{Lock::OPTIONS.map(&:inspect).join(', ')})"
    end

    opts
  end

  # Marks a keyword not given (nil is a value: timeout: nil waits forever).
  UNSET = Object.new.freeze
  private_constant :UNSET

  extend self

  Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)
end

# Rails: config.mega_mutex and Rails.logger (see MegaMutex::Railtie).
require "mega_mutex/railtie" if defined?(Rails::Railtie) && !defined?(MegaMutex::Railtie)
