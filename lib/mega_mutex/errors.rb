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

  # memcached could not be reached, timed out, or failed mid-request.
  class ConnectionError < Error; end

  # memcached answered but refused: out of memory, CAS disabled (-C), or an
  # unexpected reply.
  class ServerError < Error; end
end
