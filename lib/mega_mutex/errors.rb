# frozen_string_literal: true

# The error hierarchy. Every error MegaMutex raises on purpose is a
# MegaMutex::Error (a StandardError); bad arguments raise ArgumentError.
# Defined before the C extension loads: the extension looks these classes up.
module MegaMutex
  # Base class of every MegaMutex error.
  class Error < StandardError; end

  # The lock was not obtained within the timeout. The message is the original
  # gem's: "Failed to obtain a lock within N seconds."
  class TimeoutError < Error
    # @return [String, Symbol, Integer, nil] the mutex id asked for
    attr_reader :id
    # @return [Numeric, nil] the timeout that ran out, in seconds
    attr_reader :timeout
    # @return [String, nil] the token of the holder seen last, if known
    attr_reader :holder

    # @param message [String, nil]
    # @param id [Object] the mutex id
    # @param timeout [Numeric] seconds waited
    # @param holder [String, nil] holder token seen last
    def initialize(message = nil, id: nil, timeout: nil, holder: nil)
      @id = id
      @timeout = timeout
      @holder = holder
      super(message || "Failed to obtain a lock within #{timeout} seconds.")
    end
  end

  # The lease was found gone or taken over while the block held it (server
  # restart, eviction, flush_all, or a process paused past its lease), so
  # another process may have run the same critical section meanwhile.
  # Raised by with_distributed_mutex once the block has finished.
  class LockLostError < Error
    # @return [Object] the mutex id
    attr_reader :id
    # @return [String] what was found
    attr_reader :reason

    # @param id [Object] the mutex id
    # @param reason [String] what was found
    def initialize(message = nil, id: nil, reason: nil)
      @id = id
      @reason = reason
      super(message || "Lost the lock #{id.inspect} while holding it: #{reason}")
    end
  end

  # memcached could not be reached (the message names the server and the
  # cause: "Connection refused", "No such file or directory" for a missing
  # unix socket, ...), did not answer a request within io_timeout, or closed
  # the connection mid-request. A take or release that fails this way may
  # still have been applied: its outcome is unknown, never "not done".
  class ConnectionError < Error; end

  # memcached answered, but with an error or a reply that is not the one the
  # request allows: SERVER_ERROR (out of memory, ...), CLIENT_ERROR, ERROR,
  # CAS disabled (-C), or a malformed or unexpected reply (the connection is
  # then closed). Never read as "nobody holds the lock".
  class ServerError < Error; end
end

module MegaMutex
  # (backend :mysql) Waiting for this lock would deadlock: another session
  # holds it and waits, directly or through others, for a lock this thread
  # already holds. MariaDB detects the cycle at once (ER_LOCK_DEADLOCK) and
  # refuses the wait of one of the sessions involved, which gets this error;
  # the locks that thread already held stay held. A ServerError, so code
  # that rescues ServerError sees it too.
  #
  # (any backend) Also raised when another fiber of this thread holds the
  # lock and no Fiber.scheduler is set: that fiber cannot run to release it
  # while this one waits (Ruby's Mutex raises ThreadError there).
  class DeadlockError < ServerError
    # @return [Object, nil] the mutex id that was asked for
    attr_reader :id

    # @param message [String]
    # @param id [Object] the mutex id
    def initialize(message = nil, id: nil)
      @id = id
      super(message || "waiting for the lock #{id.inspect} would deadlock")
    end
  end
end
