# frozen_string_literal: true

require "socket"

# Owner tokens: the value a Lock stores, unique to one take.

module MegaMutex
  class Lock
    HOST = Socket.gethostname.to_s.b.gsub(/[^\x21-\x7e]/n, "_")[0, 64].then { |h| h.empty? ? "host" : h }.freeze
    private_constant :HOST
    # The two hex digits of each byte value, frozen: appended to a String,
    # they make no new object.
    HEX = Array.new(256) { |byte| format("%02x", byte).freeze }.freeze
    private_constant :HEX
    # 2**32: each half of a token's 64 random bits is drawn below it (a Fixnum, not a Bignum).
    HALF = 1 << 32
    private_constant :HALF

    # A fresh owner token: host, pid and 64 random bits as 16 hex digits,
    # printable ASCII - one String. The bits come from a generator of this
    # process's own, seeded from the system's (Random.new) and seeded again
    # in a forked child, so that a child never repeats its parent's tokens
    # (nor does srand in the application touch them).
    # @api private
    # @return [String]
    def self.new_token
      prefix, random = @token_source
      high = random.rand(HALF)
      low = random.rand(HALF)
      prefix.dup << HEX[high >> 24] << HEX[(high >> 16) & 255] << HEX[(high >> 8) & 255] << HEX[high & 255] <<
        HEX[low >> 24] << HEX[(low >> 16) & 255] << HEX[(low >> 8) & 255] << HEX[low & 255]
    end

    # In a forked child (MegaMutex.forked!): the token's pid and random
    # source start again.
    # @api private
    # @param pid [Integer] this process's
    # @return [void]
    def self.forked!(pid = MegaMutex.pid)
      @token_source = ["#{HOST}:#{pid}:".b.freeze, Random.new].freeze
    end
    forked!(Process.pid)
  end
end
