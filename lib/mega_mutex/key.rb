# frozen_string_literal: true

require "digest"

module MegaMutex
  # Turns (namespace, id) into a memcached key, one key per pair:
  #
  # - "namespace:id" when the id is made of {SAFE_ID} characters and the key
  #   fits in 250 bytes, so keys stay readable in memcached
  #   (`myapp:report:2024-01`);
  # - otherwise "namespace:<readable prefix>#<digest>": the id's first 40
  #   bytes with every other byte turned into "_", then "#" and the first
  #   128 bits of the id's SHA-256 as 32 hex digits
  #   (`myapp:WidgetMaker_Mutex_ID#8bcd94f6…`).
  #
  # No two pairs share a key: a namespace cannot contain ":", so the first
  # ":" of a key ends the namespace; a verbatim id never contains "#" and a
  # hashed one always does; two hashed ids share a key only if their
  # SHA-256 agree on 128 bits (about 1 in 10^20 for a billion ids, and then
  # the two ids share one lock: too much exclusion, never too little).
  module Key
    # Characters an id may use to be sent verbatim.
    SAFE_ID = %r{\A[A-Za-z0-9_.\-/:@=+]+\z}n.freeze
    # Characters a namespace may use: those of an id but ":", which ends the
    # namespace in a key.
    SAFE_NAMESPACE = %r{\A[A-Za-z0-9_.\-/@=+]{1,100}\z}n.freeze
    # memcached's key limit, in bytes.
    MAX_KEY = 250
    # Length of the readable prefix kept in front of a hashed id.
    PREFIX = 40
    # Hex digits of SHA-256 kept after "#" (128 bits).
    DIGEST_HEX = 32

    # Keys remembered per namespace by {cached}; beyond this the cache
    # starts again (a process using ever new ids does not grow).
    CACHE_MAX = 1024

    @cache = [nil, {}.freeze].freeze # [namespace, {id => key}]

    # The key for (namespace, id), made once per id and remembered: the hot
    # path of a lock taken again and again under one id allocates nothing
    # for its key. Same result as {for}, frozen.
    # @param namespace [String] a validated namespace
    # @param id [String, Symbol, Integer] the mutex id
    # @return [String] the key (frozen)
    # @raise [ArgumentError] for a nil, empty or unsupported id (never cached)
    def self.cached(namespace, id)
      ns, keys = @cache
      unless namespace.equal?(ns)
        keys = {}
        @cache = [namespace, keys].freeze
      end
      key = keys[id]
      return key if key

      key = self.for(namespace, id).freeze
      keys.clear if keys.size >= CACHE_MAX
      keys[id] = key # a String id is copied and frozen by the Hash: a later change to it changes nothing here
    end

    module_function

    # @param namespace [String] a validated namespace (see {SAFE_NAMESPACE})
    # @param id [String, Symbol, Integer] the mutex id
    # @return [String] the key, at most 250 printable ASCII bytes
    # @raise [ArgumentError] for a nil, empty or unsupported id
    def for(namespace, id)
      bytes = id_bytes(id)
      key = "#{namespace}:#{bytes}"
      return key if key.bytesize <= MAX_KEY && SAFE_ID.match?(bytes)

      readable = bytes.byteslice(0, PREFIX).gsub(%r{[^A-Za-z0-9_.\-/:@=+]}n, "_")
      "#{namespace}:#{readable}##{Digest::SHA256.hexdigest(bytes)[0, DIGEST_HEX]}"
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

      str.ascii_only? ? str : str.b
    end
  end
end
