# frozen_string_literal: true

require "mega_mutex"
require "mega_mutex/active_record_database"

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
#   seconds), #unlock (true if this object held it and gave it back),
#   #locked? (whether this object holds it), #synchronize (true if the block
#   ran, false if the lock was not obtained - not the block's value),
#   #try_lock (whether the lock could be taken within `timeout`; it is given
#   back at once), #excluse_unlock, #key, #timeout, #exception_on_timeout,
#   .synchronize(key, timeout = 1, exception_on_timeout = false) - for any
#   subclass that defines private get_lock and release_lock (each true when
#   done); "Method not implemented" (RuntimeError) without them.
# - MySQLMutex: new(key, timeout = 1, exception_on_timeout = false,
#   connection = nil); .synchronize(key, timeout = 1, exception_on_timeout,
#   connection = nil), whose exception_on_timeout defaults to a true value as
#   in the original (its default there is DEFAULT_TIMEOUT, i.e. 1: a busy
#   lock raises MutexLockTimeout); .active_locks; nesting: a thread that
#   holds a key gets it again at once (true), and it is given back when every
#   holder has unlocked; #unlock of a lock found gone returns false and
#   #locked? stays true.
# - MutexLockTimeout ("Mutex lock operation timed out") and
#   MutexLockReleaseFailure ("Failed to release Mutex lock. This should be
#   regarded as a system bug."), both StandardErrors; neither message can be
#   replaced.
#
# What differs, and why:
#
# 1. Sessions: MySQLMutex never runs GET_LOCK on the application's
#    connection. It opens sessions of its own (one per thread holding
#    locks). The `connection` argument only says which server: nil
#    (MegaMutex's configuration when its backend is :mysql, else
#    ActiveRecord::Base's database - its writing role's, even inside
#    connected_to(role: :reading), so that a key is never locked on a
#    replica; else ArgumentError), a database.yml-style
#    Hash (host, port, socket, username, password, database, url, adapter;
#    String or Symbol keys; read as its adapter reads it, see
#    MegaMutex::ActiveRecordDatabase), a mysql:// URL, or an ActiveRecord
#    connection (its pool's settings; a reading-role connection's writing
#    role's). A lock on a pooled connection would
#    be granted again to the next thread that checks that connection out,
#    would stay held while a query runs after its holder died, and would go
#    with a reconnect.
# 2. Lock names are MegaMutex's ("mm=" + namespace + ":" + key, hashed to at
#    most 64 bytes when long or not plain), not the bare key: processes on
#    the original gem do not exclude processes on this one (switch every
#    process at once), and keys of any length work (the original's failed
#    beyond 64 characters on MySQL 5.7+, 192 bytes on MariaDB). A held lock
#    shows as two named locks in the server: the name and its companion
#    ("mm~...", which names the holder; docs/mysql.md).
# 3. Keys are Strings, Symbols or Integers (ArgumentError for others, nil
#    included, at new); :k and "k" are one lock.
# 4. Timeouts: nil waits for ever; a negative, non-numeric or String timeout
#    raises ArgumentError at new (the original sent it to GET_LOCK, where a
#    negative one waits for ever on MySQL and returns at once on MariaDB,
#    MDEV-4017, and nil made MariaDB's GET_LOCK return NULL at once: false).
# 5. Nesting is counted per thread (the original: per connection id, so two
#    threads given one connection both "held" a key). One MySQLMutex may be
#    shared by threads (a Mutex in a constant): each thread's takes through
#    it are its own - #locked? and #unlock speak for the calling thread
#    (#unlock from a thread that holds nothing through it is false, and
#    never gives back another thread's lock), and #synchronize gives back
#    exactly what the calling thread took.
# 6. MySQLMutex.new does no I/O (the original asked the server for its
#    connection id, and needed a connected ActiveRecord); errors come from
#    #lock and #unlock, as MegaMutex errors: ConnectionError, ServerError,
#    DeadlockError (a deadlock between threads' locks, detected by the
#    server) instead of ActiveRecord's.
# 7. A held lock is kept alive by MegaMutex (lock_ttl, the renewer): a
#    holder that stops (SIGSTOP) or is cut off loses it after lock_ttl + 2 s
#    of silence, instead of the connection's wait_timeout (ActiveRecord sets
#    it to 24 days). A lock found lost is logged; #unlock then returns false.
# 8. .active_locks is a snapshot, { Thread => { key => nesting depth } }, of
#    the locks held through MySQLMutex in this process (the original: its
#    live Hash by connection id, empty entries included).
# 9. Logging: MegaMutex's line at each release to MegaMutex's logger (in
#    Rails, Rails.logger) instead of "MySQLMutex: GET_LOCK=1" and
#    "MySQLMutex: RELEASE_LOCK=1" at debug level.
# 10. #excluse_unlock is #unlock (the original's alias named Ruby's
#    Mutex#unlock, which raised ThreadError whatever the state).
# 11. #lock stores true or false (the original stored get_lock's value, so a
#    subclass's #locked? could return it).
# 12. MutexLockTimeout is a MegaMutex::TimeoutError (so a MegaMutex::Error,
#    still a StandardError) with #id and #timeout; its #to_s is the message
#    too. MutexLockReleaseFailure is a MegaMutex::Error; neither gem raises it.
# 13. Interrupts (Timeout, Thread#raise, Ctrl-C) end a wait at once and leave
#    nothing held or queued in the server (the original's GET_LOCK ran on in
#    the server, and could be granted to the connection after the caller
#    had given up); fork: a child never uses its parent's sessions.
# 14. Not provided: GlobalMutex (the original's test implementation) and the
#    require names "distributed_mutex" / "mysql_mutex".

# Raised by #lock and #synchronize when exception_on_timeout is true. Its
# message is always the original's.
class MutexLockTimeout < MegaMutex::TimeoutError
  # The message, whatever is given (as in the original).
  MESSAGE = "Mutex lock operation timed out"

  # @param _message [Object] ignored: the message is {MESSAGE}
  # @param details [Hash] id:, timeout: (see MegaMutex::TimeoutError)
  def initialize(_message = nil, **details)
    super(MESSAGE, **details)
  end

  # @return [String] {MESSAGE}
  def message
    MESSAGE
  end
end

# A release the server refused. Neither the original nor this drop-in raises
# it (MySQLMutex#unlock returns false instead); kept for code that rescues it.
# Its message is always the original's.
class MutexLockReleaseFailure < MegaMutex::Error
  # The message, whatever is given (as in the original).
  MESSAGE = "Failed to release Mutex lock. This should be regarded as a system bug."

  # @param _message [Object] ignored: the message is {MESSAGE}
  def initialize(_message = nil)
    super(MESSAGE)
  end

  # @return [String] {MESSAGE}
  def message
    MESSAGE
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
  # MySQLMutex.synchronize's exception_on_timeout default: the original's is
  # DEFAULT_TIMEOUT (1), a true value, so a busy lock raises MutexLockTimeout.
  SYNCHRONIZE_EXCEPTION_ON_TIMEOUT = true

  @active = {}
  @stores = {}
  @stores_config = nil
  @registry_mutex = Mutex.new

  class << self
    # @return [Hash{Thread => Hash{Object => Integer}}] a snapshot of the
    #   locks held through MySQLMutex in this process: by thread, each key's
    #   nesting depth
    def active_locks
      @registry_mutex.synchronize { @active.transform_values(&:dup) }
    end

    # @return [Boolean] #synchronize on a new mutex (true if the block ran)
    # @raise [MutexLockTimeout] when not obtained and exception_on_timeout
    #   (by default, as in the original)
    def synchronize(key, timeout = DistributedMutex::DEFAULT_TIMEOUT,
                    exception_on_timeout = SYNCHRONIZE_EXCEPTION_ON_TIMEOUT, connection = nil, &block)
      new(key, timeout, exception_on_timeout, connection).synchronize(&block)
    end

    # @api private
    # @return [Array(MegaMutex::Configuration, MegaMutex::Pool), nil] the
    #   configuration and pool for `connection` (MegaMutex's settings, that
    #   server); nil for MegaMutex's own. Once MegaMutex is configured again,
    #   the pools made from the old configuration are closed, as MegaMutex's
    #   own is (a lock held through one keeps its session until released).
    # @raise [ArgumentError] for a connection that names no MySQL server
    def store_for(connection)
      settings = settings_of(connection)
      return nil if settings.nil?

      current = MegaMutex.configuration
      @registry_mutex.synchronize do
        unless @stores_config.equal?(current)
          @stores.each_value { |(_, pool)| pool.close }
          @stores.clear
          @stores_config = current
        end
        @stores[settings.to_h] ||= begin
          config = current.dup
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

    # @return [MegaMutex::Configuration::MysqlSettings, nil] nil: MegaMutex's own configuration
    def settings_of(connection)
      case connection
      when nil then default_settings
      when String then MegaMutex::Configuration.parse_mysql_url(connection)
      when Hash
        hash = MegaMutex::ActiveRecordDatabase.settings(connection)
        raise ArgumentError, "MySQLMutex connection: adapter #{connection_adapter(connection).inspect} is not MySQL (mysql2 or trilogy)" unless hash

        MegaMutex::Configuration.mysql_settings_from(hash)
      else
        hash = MegaMutex::ActiveRecordDatabase.of_connection(connection)
        unless hash
          raise ArgumentError, "MySQLMutex connection must be nil, a Hash of settings, a mysql:// URL or an " \
                               "ActiveRecord connection to MySQL (got #{connection.class})"
        end
        MegaMutex::Configuration.mysql_settings_from(hash)
      end
    end

    # No connection given: MegaMutex's configuration when it is :mysql, else
    # ActiveRecord::Base's database (the original's default connection; its
    # writing role's, never a replica).
    def default_settings
      return nil if MegaMutex.configuration.backend == :mysql

      hash = MegaMutex::ActiveRecordDatabase.of_base
      return MegaMutex::Configuration.mysql_settings_from(hash) if hash

      raise ArgumentError, "MySQLMutex needs a MySQL server: configure MegaMutex with backend :mysql and a mysql_url, " \
                           "connect ActiveRecord::Base to MySQL, or pass a connection (a Hash, a mysql:// URL or an " \
                           "ActiveRecord connection)"
    end

    def connection_adapter(hash)
      hash[:adapter] || hash["adapter"]
    end
  end

  # @param key [String, Symbol, Integer]
  # @param timeout [Numeric, nil] seconds #lock waits (nil: for ever)
  # @param exception_on_timeout [Boolean]
  # @param connection [nil, Hash, String, Object] which server (see the top of this file)
  # @raise [ArgumentError] for a bad key, timeout or connection
  def initialize(key, timeout = DEFAULT_TIMEOUT, exception_on_timeout = DEFAULT_EXCEPTION_ON_TIMEOUT, connection = nil)
    super(key, timeout, exception_on_timeout)
    @store = self.class.store_for(connection)
    @lock = new_lock # validates key and timeout now (each take has a Lock of its own)
    # Each thread's state through this object (a MySQLMutex may be shared by
    # threads): its takes, innermost last, and whether #locked? is true.
    @threads = {}
    @threads_mutex = Mutex.new
  end

  # @return [Boolean] whether the calling thread holds the lock through this
  #   object (true too after an #unlock that found it lost, as the original)
  def locked?
    mine&.locked || false
  end

  # Takes the lock, waiting up to #timeout seconds (under the caller's
  # interrupt mask, as MegaMutex::Lock#lock). An interrupt (Timeout,
  # Thread#raise) or a server error during the call leaves nothing held; one
  # delivered as the call returns (Ruby checks for interrupts there too) finds
  # the lock taken and recorded, as one delivered just after the return
  # would: #locked? is true and #unlock gives it back (#synchronize does).
  # @return [Boolean] true if taken; false if not (unless exception_on_timeout)
  # @raise [MutexLockTimeout] when not taken and exception_on_timeout
  def lock
    taking = new_lock
    begin
      taking.lock
      Thread.handle_interrupt(MegaMutex::Lock::DEFER) { record(taking) }
    rescue MegaMutex::TimeoutError
      Thread.handle_interrupt(MegaMutex::Lock::DEFER) { forget_lost }
      raise MutexLockTimeout.new(id: key, timeout: timeout) if exception_on_timeout

      false
    rescue Exception # rubocop:disable Lint/RescueException
      # An interrupt that landed after the take (on the way out of the wait,
      # or once recorded): give it back, so that a raising call holds nothing.
      Thread.handle_interrupt(MegaMutex::Lock::DEFER) { undo(taking) }
      raise
    end
  end

  # Gives the lock back (true), or says it was not held by this object or
  # was found lost (false; #locked? then stays true, as in the original).
  # @return [Boolean]
  def unlock
    Thread.handle_interrupt(MegaMutex::Lock::DEFER) do
      state = mine
      next false unless state&.locked && (taken = state.takes.pop)

      released = taken.unlock
      self.class.track(key, -1)
      state.locked = false if released
      drop_state(state)
      released
    end
  end
  alias excluse_unlock unlock

  # Runs the block holding the lock (under the caller's interrupt mask), and
  # gives back what this call took, even when an interrupt came as #lock
  # returned or as the block ended.
  # @return [Boolean] true if the block ran, false if the lock was not obtained
  def synchronize
    depth = mine&.takes&.size || 0
    begin
      return false unless lock

      yield
    ensure
      begin
        give_back_to(depth)
      ensure
        # An interrupt that landed before the line above took effect.
        give_back_to(depth)
      end
    end
    true
  end

  private

  def new_lock
    MegaMutex::Lock.new(key, timeout: timeout, _store: @store)
  end

  # The calling thread's state through this object: its takes (innermost
  # last), its #locked?, and the process it is of.
  ThreadState = Struct.new(:takes, :locked, :pid)
  private_constant :ThreadState

  # @return [ThreadState, nil] the calling thread's state, nil if it has
  #   none - in a forked child too, which holds nothing its parent took
  #   (the forking thread is the child's main thread, with the parent's state)
  def mine
    state = @threads_mutex.synchronize { @threads[Thread.current] }
    state if state && state.pid == MegaMutex.pid
  end

  # The calling thread's state no longer says anything (nothing held, not
  # locked?): dropped, so that a shared object does not keep every thread.
  def drop_state(state)
    return unless state.takes.empty? && !state.locked

    @threads_mutex.synchronize { @threads.delete(Thread.current) if @threads[Thread.current].equal?(state) }
  end

  # A #lock that timed out: #locked? is false again for the calling thread.
  def forget_lost
    state = mine
    return if state.nil?

    state.locked = false
    drop_state(state)
  end

  # Gives back the calling thread's takes beyond the first `depth`.
  def give_back_to(depth)
    Thread.handle_interrupt(MegaMutex::Lock::DEFER) do
      while (state = mine) && state.takes.size > depth && state.locked
        unlock
      end
    end
  end

  # Bookkeeping of a take (interrupts deferred).
  # @return [true]
  def record(taking)
    state = mine || @threads_mutex.synchronize { @threads[Thread.current] = ThreadState.new([], false, MegaMutex.pid) }
    state.takes << taking
    self.class.track(key, 1)
    state.locked = true
  end

  # Gives back a take that a raising #lock must not leave held (interrupts deferred).
  def undo(taking)
    state = mine
    if state&.takes&.last.equal?(taking)
      state.takes.pop
      self.class.track(key, -1)
      state.locked = !state.takes.empty?
      drop_state(state)
    end
    taking.unlock if taking.owned?
  end

  # DistributedMutex's hooks, for code that calls them directly.
  def get_lock
    lock
  end

  def release_lock
    unlock
  end
end
