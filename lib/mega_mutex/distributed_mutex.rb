# frozen_string_literal: true

require "mega_mutex"

# A drop-in for users of the distributed_mutex gem (Birkir A. Barkarson's
# DistributedMutex / MySQLMutex): replace
#
#   require "mysql_mutex"            # or "distributed_mutex"
#
# with
#
#   require "mega_mutex/distributed_mutex"
#
# and the same top-level classes exist, with the same constructors, return
# values and messages, on MegaMutex's MariaDB store (backend :mysql) and lock
# core. What it mirrors:
#
# - DistributedMutex (a Mutex): new(key, timeout = 1, exception_on_timeout =
#   false); #lock (true, or false / MutexLockTimeout after `timeout`
#   seconds), #unlock (true if this object held it), #locked? (whether this
#   object holds it), #synchronize (true if the block ran, false if the lock
#   was not obtained - not the block's value, as in the original), #try_lock
#   (whether the lock could be taken; it is given back at once, as in the
#   original), #excluse_unlock, .synchronize(key, timeout,
#   exception_on_timeout) - for any subclass that defines private get_lock
#   and release_lock (each true when done).
# - MySQLMutex: new(key, timeout = 1, exception_on_timeout = false,
#   connection = nil), .synchronize(key, timeout, exception_on_timeout,
#   connection), .active_locks.
# - MutexLockTimeout ("Mutex lock operation timed out") and
#   MutexLockReleaseFailure.
#
# What differs, and why:
#
# - MySQLMutex never uses the application's connection: it opens sessions of
#   its own (a lock must not share a session with queries, which would keep
#   it held while a query runs after its holder died, and a pooled
#   connection holding a lock would grant it again to another thread). The
#   `connection` argument only says which server: nil (MegaMutex's
#   configuration, or ActiveRecord's settings in Rails), a database.yml-style
#   Hash (host, port, socket, username, password, database; String or Symbol
#   keys), a mysql:// URL, or an ActiveRecord connection (its settings).
# - Lock names are MegaMutex's ("mm=" + namespace:key, hashed when long or
#   not plain), not the bare key: processes on the original gem do not
#   exclude processes on this one. Switch every process at once.
# - Nesting is counted per thread (the original: per connection and key).
#   A thread's locks share one session, so MariaDB's deadlock detection
#   applies: the victim gets MegaMutex::DeadlockError.
# - A lock is kept alive while held (the renewer), and found lost when its
#   session breaks: #unlock then returns false.
# - A negative or nil timeout: nil waits for ever, a negative one raises
#   ArgumentError (MariaDB would return NULL at once: MDEV-4017).
# - excluse_unlock is #unlock (in the original it was Ruby's Mutex#unlock by
#   accident, which raised ThreadError).
# - .active_locks is { Thread => { key => nesting depth } } of the locks
#   held through MySQLMutex in this process (the original: by connection id).

# Raised by #lock and #synchronize when exception_on_timeout is true.
class MutexLockTimeout < MegaMutex::TimeoutError
  def initialize(message = "Mutex lock operation timed out", **details)
    super
  end
end

# A release the server refused. MySQLMutex#unlock returns false for a lock
# found lost instead (as the original does); kept for code that rescues it.
class MutexLockReleaseFailure < MegaMutex::Error
  def initialize(message = "Failed to release Mutex lock. This should be regarded as a system bug.")
    super
  end
end

# The abstract distributed mutex: a subclass defines the private methods
# get_lock and release_lock (each returns true when done).
class DistributedMutex < Mutex
  # Seconds #lock waits unless told otherwise.
  DEFAULT_TIMEOUT = 1
  # Whether #lock raises MutexLockTimeout (instead of returning false) unless told otherwise.
  DEFAULT_EXCEPTION_ON_TIMEOUT = false

  # @return [Object] the lock's key
  attr_reader :key
  # @return [Numeric, nil] seconds #lock waits
  attr_reader :timeout
  # @return [Boolean] whether #lock raises MutexLockTimeout instead of returning false
  attr_reader :exception_on_timeout

  # @param key [String, Symbol, Integer]
  # @param timeout [Numeric, nil] seconds to wait (nil: for ever)
  # @param exception_on_timeout [Boolean]
  def initialize(key, timeout = DEFAULT_TIMEOUT, exception_on_timeout = DEFAULT_EXCEPTION_ON_TIMEOUT)
    super()
    @key = key
    @timeout = timeout
    @exception_on_timeout = exception_on_timeout
    @locked = false
  end

  # Takes the lock, waiting up to #timeout seconds.
  # @return [Boolean] true if taken; false if not (unless exception_on_timeout)
  # @raise [MutexLockTimeout] when not taken and exception_on_timeout
  def lock
    @locked = get_lock ? true : false
    raise MutexLockTimeout.new(id: key, timeout: timeout) if !@locked && exception_on_timeout

    @locked
  end

  # @return [Boolean] whether this object holds the lock
  def locked?
    @locked
  end

  # Runs the block holding the lock.
  # @return [Boolean] true if the block ran, false if the lock was not obtained
  def synchronize
    return false unless lock

    begin
      yield
    ensure
      unlock
    end
    true
  end

  # Whether the lock can be taken now (within #timeout): taken and given
  # back at once, as in the original.
  # @return [Boolean]
  def try_lock
    lock
    locked?
  ensure
    unlock
  end

  # Gives the lock back.
  # @return [Boolean] true if this object held it and it is released
  def unlock
    return false unless @locked

    released = release_lock ? true : false
    @locked = false if released
    released
  end
  alias excluse_unlock unlock

  # @return [Boolean] #synchronize on a new mutex
  def self.synchronize(key, timeout = DEFAULT_TIMEOUT, exception_on_timeout = DEFAULT_EXCEPTION_ON_TIMEOUT, &block)
    new(key, timeout, exception_on_timeout).synchronize(&block)
  end

  private

  def get_lock
    raise "Method not implemented"
  end

  def release_lock
    raise "Method not implemented"
  end
end

# A DistributedMutex on MariaDB/MySQL named locks (MegaMutex's :mysql store).
class MySQLMutex < DistributedMutex
  @active = {}
  @stores = {}
  @registry_mutex = Mutex.new

  class << self
    # @return [Hash{Thread => Hash{Object => Integer}}] locks held through
    #   MySQLMutex in this process: by thread, each key's nesting depth
    def active_locks
      @registry_mutex.synchronize { @active.transform_values(&:dup) }
    end

    # @return [Boolean] #synchronize on a new mutex
    def synchronize(key, timeout = DistributedMutex::DEFAULT_TIMEOUT,
                    exception_on_timeout = DistributedMutex::DEFAULT_EXCEPTION_ON_TIMEOUT, connection = nil, &block)
      new(key, timeout, exception_on_timeout, connection).synchronize(&block)
    end

    # @api private
    # @return [Array(MegaMutex::Configuration, MegaMutex::Pool), nil] the
    #   configuration and pool for `connection`; nil for MegaMutex's own
    def store_for(connection)
      settings = settings_of(connection)
      return nil if settings.nil?

      @registry_mutex.synchronize do
        @stores[[settings.to_h, MegaMutex.configuration]] ||= begin
          config = MegaMutex.configuration.dup
          config.backend = :mysql
          config.mysql_settings = settings.to_h
          config.validate!.freeze
          [config, MegaMutex::Pool.new(config)].freeze
        end
      end
    end

    # @api private
    def track(key, delta)
      @registry_mutex.synchronize do
        keys = (@active[Thread.current] ||= {})
        keys[key] = keys.fetch(key, 0) + delta
        keys.delete(key) unless keys[key].positive?
        @active.delete(Thread.current) if keys.empty?
      end
    end

    private

    # @return [MegaMutex::Configuration::MysqlSettings, nil]
    def settings_of(connection)
      case connection
      when nil then nil
      when String then MegaMutex::Configuration.parse_mysql_url(connection)
      when Hash then MegaMutex::Configuration.mysql_settings_from(connection)
      else
        hash = active_record_settings(connection)
        unless hash
          raise ArgumentError, "MySQLMutex connection must be nil, a Hash of settings, a mysql:// URL or an " \
                               "ActiveRecord connection (got #{connection.class})"
        end
        MegaMutex::Configuration.mysql_settings_from(hash)
      end
    end

    def active_record_settings(connection)
      if connection.respond_to?(:pool) && connection.pool.respond_to?(:db_config)
        connection.pool.db_config.configuration_hash
      elsif connection.instance_variable_defined?(:@config)
        connection.instance_variable_get(:@config)
      end
    end
  end

  # @param key [String, Symbol, Integer]
  # @param timeout [Numeric, nil] seconds #lock waits (nil: for ever)
  # @param exception_on_timeout [Boolean]
  # @param connection [nil, Hash, String, Object] which server (see the top of this file)
  # @raise [ArgumentError] for a bad key, timeout or connection
  def initialize(key, timeout = DEFAULT_TIMEOUT, exception_on_timeout = DEFAULT_EXCEPTION_ON_TIMEOUT, connection = nil)
    super(key, timeout, exception_on_timeout)
    @lock = MegaMutex::Lock.new(key, timeout: timeout, _store: self.class.store_for(connection))
  end

  private

  def get_lock
    @lock.lock
    self.class.track(key, 1)
    true
  rescue MegaMutex::TimeoutError
    false
  end

  def release_lock
    released = @lock.unlock
    self.class.track(key, -1)
    released
  end
end
