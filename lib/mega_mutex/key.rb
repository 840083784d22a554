# frozen_string_literal: true

require "digest"

module MegaMutex
  # Turns a mutex id into a memcached key: "namespace:id" when the id is
  # short and made of safe characters, so keys stay readable in memcached;
  # otherwise "namespace:<readable prefix>#<sha256 of the id>". Verbatim keys
  # never contain "#", so the two forms cannot collide.
  module Key
    # Characters an id may use to be sent verbatim.
    SAFE_ID = %r{\A[A-Za-z0-9_.\-/:@=+]+\z}n.freeze
    # Characters a namespace may use.
    SAFE_NAMESPACE = %r{\A[A-Za-z0-9_.\-/:@=+]{1,100}\z}n.freeze
    # memcached's key limit, in bytes.
    MAX_KEY = 250
    # Length of the readable prefix kept in front of a hashed id.
    PREFIX = 40

    module_function

    # @param namespace [String] a validated namespace
    # @param id [String, Symbol, Integer] the mutex id
    # @return [String] the key, at most 250 printable ASCII bytes
    # @raise [ArgumentError] for a nil, empty or unsupported id
    def for(namespace, id)
      bytes = id_bytes(id)
      key = "#{namespace}:#{bytes}"
      return key if key.bytesize <= MAX_KEY && SAFE_ID.match?(bytes)

      readable = bytes.gsub(%r{[^A-Za-z0-9_.\-/:@=+]}n, "_")[0, PREFIX]
      "#{namespace}:#{readable}##{Digest::SHA256.hexdigest(bytes)}"
    end

    # @param id [Object]
    # @return [String] the id's bytes (binary)
    # @raise [ArgumentError]
    def id_bytes(id)
      str = case id
            when String then id
            when Symbol, Integer then id.to_s
            when nil then raise ArgumentError, "mutex id must not be nil"
            else raise ArgumentError, "mutex id must be a String, Symbol or Integer (got #{id.class})"
            end
      raise ArgumentError, "mutex id must not be empty" if str.empty?

      str.b
    end
  end
end
