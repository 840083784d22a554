# frozen_string_literal: true

require "ipaddr"

module MegaMutex
  # The :memcached backend's settings and rules: the servers, their canonical
  # names and the limits the native client has.
  class Configuration
    # memcached's default port.
    DEFAULT_PORT = 11_211
    # Most servers one configuration may list (the C client's MM_MAX_SERVERS).
    MAX_SERVERS = 64
    # Longest host name: what DNS allows (253 characters; libmemcached itself
    # would take 1,024 and fail at the first lock).
    MAX_HOST = 253
    # Longest unix socket path, in bytes: sockaddr_un's 108-byte sun_path
    # less its NUL (libmemcached fails at connect beyond it).
    MAX_SOCKET_PATH = 107

    store_settings :memcached, defaults: :memcached_defaults, client: :memcached_client, c_leases: true

    # @return [Array<String>] the servers in canonical form, "host:port", "[v6addr]:port" or a
    #   socket path (see {.parse_server}), in the order given
    attr_reader :memcache_servers

    # The servers the locks are kept on. Each lock lives on one of them,
    # chosen by hashing its key against the servers' canonical names (see
    # {.parse_server}): every process sharing locks must list the same
    # servers, in any order, under names that are equal once canonical.
    # Duplicates (after canonicalisation) count once.
    #
    # @param servers [Array<String>, String] "host", "host:port", "[v6addr]", "[v6addr]:port" or
    #   "/path/to.sock"; a String may list several, comma-separated
    # @raise [ArgumentError] for an empty list, more than {MAX_SERVERS} servers, or a bad entry
    def memcache_servers=(servers)
      list = servers.is_a?(String) ? servers.split(",") : servers
      unless list.is_a?(Array)
        raise ArgumentError, "memcache_servers must be an Array of \"host:port\" strings (got #{servers.class})"
      end
      raise ArgumentError, "memcache_servers must not be empty" if list.empty?

      addresses = list.map { |entry| self.class.parse_server(entry) }.uniq
      if addresses.size > MAX_SERVERS
        raise ArgumentError, "memcache_servers: at most #{MAX_SERVERS} servers (got #{addresses.size})"
      end

      @memcache_servers = addresses.map { |host, port| format_server(host, port).freeze }.freeze
      # Sorted: libmemcached breaks ties between equal hash points by list
      # position, so the order must not depend on how the list was written.
      @server_addresses = addresses.sort_by { |host, port| [host.b, port] }.map { |pair| pair.map(&:freeze).freeze }.freeze
    end

    # @return [Array<Array(String, Integer)>] [host, port] pairs; port 0 for a unix socket
    # @api private
    def server_addresses
      @server_addresses
    end

    # Parses one server and puts it in its canonical form, so that the same
    # server written two ways is one server: libmemcached places each lock by
    # hashing the "host:port" text, and two processes that spelled a server
    # differently would look for the same lock on different servers.
    #
    # - host names are lowercased and lose a trailing dot; `localhost` is
    #   127.0.0.1; other names are kept as written (never resolved);
    # - an IPv4 address must be four decimal numbers without leading zeros
    #   (127.1, 0x7f.0.0.1 or 0127.0.0.1 raise: the C resolver reads them
    #   as other spellings of an address);
    # - an IPv6 address goes in brackets and is compressed and lowercased
    #   ([0:0::1] is [::1]); an IPv4-mapped one ([::ffff:10.0.0.1]) is the
    #   IPv4 address;
    # - a missing port is 11211;
    # - a socket path loses repeated slashes and "." components.
    #
    # @api private
    # @param entry [String] "host", "host:port", "[v6addr]", "[v6addr]:port" or "/path/to.sock"
    # @return [Array(String, Integer)] [host, port]; port 0 for a unix socket
    # @raise [ArgumentError] naming memcache_servers and what is wrong with the entry
    def self.parse_server(entry)
      unless entry.is_a?(String)
        raise ArgumentError, "memcache_servers: each server must be a String like \"host:port\" (got #{entry.inspect})"
      end

      str = entry.b.strip
      shown = entry.bytesize > 80 ? "#{entry.byteslice(0, 60).scrub.inspect[0..-2]}...\" (#{entry.bytesize} bytes)" : entry.inspect
      bad = ->(why) { raise ArgumentError, "memcache_servers: bad server #{shown}: #{why}" }
      bad.call("empty") if str.empty?
      return [socket_path(str, bad).force_encoding(entry.encoding), 0] if str.start_with?("/")

      host, port = case str
                   when /\A\[([^\]]*)\](?::(.*))?\z/ then [ipv6_host(Regexp.last_match(1), bad), Regexp.last_match(2)]
                   when /\A[0-9A-Fa-f]*:[0-9A-Fa-f]*:/
                     bad.call("write an IPv6 address in brackets, as [::1] or [::1]:11211")
                   when /\A([^:\[\]]+)(?::(.*))?\z/ then [host_name(Regexp.last_match(1), bad), Regexp.last_match(2)]
                   else bad.call("expected host, host:port, [ipv6]:port or /path/to.sock")
                   end
      return [host, DEFAULT_PORT] if port.nil?

      bad.call("port #{port.inspect} is not a number") unless port.match?(/\A\d{1,6}\z/)
      bad.call("port #{port} is out of range 1-65535") unless (1..65_535).cover?(port.to_i)
      [host, port.to_i]
    end

    # @api private
    # @return [String] a canonical host name or IPv4 address (US-ASCII)
    def self.host_name(host, bad)
      bad.call("host #{host.inspect} has characters a host name cannot have") unless host.match?(/\A[A-Za-z0-9.\-_]+\z/)
      name = host.downcase.chomp(".")
      if name.bytesize > MAX_HOST
        bad.call("host name is #{name.bytesize} characters, longer than the #{MAX_HOST} a DNS name can have")
      end
      labels = name.split(".", -1)
      bad.call("host #{host.inspect} has an empty label") if name.empty? || labels.any?(&:empty?)
      bad.call("host #{host.inspect} has a label longer than 63 characters") if labels.any? { |l| l.bytesize > 63 }
      return ipv4_host(name, host, bad) if labels.all? { |l| l.match?(/\A(?:\d+|0x\h*)\z/) }

      name == "localhost" ? "127.0.0.1" : name.encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] an IPv4 address in dotted-quad form
    def self.ipv4_host(name, host, bad)
      parts = name.split(".")
      unless parts.size == 4 && parts.all? { |p| p.match?(/\A(?:0|[1-9]\d{0,2})\z/) && p.to_i <= 255 }
        bad.call("#{host.inspect} is not an IPv4 address as four decimal numbers 0-255 without leading zeros")
      end

      parts.join(".").encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] a compressed, lowercased IPv6 address, or the IPv4
    #   address an IPv4-mapped one stands for
    def self.ipv6_host(text, bad)
      bad.call("#{text.inspect} is not an IPv6 address") unless text.match?(/\A[0-9A-Fa-f:.]+\z/) && text.include?(":")
      addr = begin
        IPAddr.new(text)
      rescue IPAddr::Error
        bad.call("#{text.inspect} is not an IPv6 address")
      end
      addr = addr.native if addr.ipv4_mapped?
      addr.to_s.encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] the path with repeated slashes and "." components removed
    def self.socket_path(str, bad)
      bad.call("a socket path cannot contain whitespace or NUL") if str.match?(/[\s\x00]/n)
      path = str.squeeze("/").gsub(%r{/\.(?=/|\z)}, "")
      path = "/" if path.empty?
      if path.bytesize > MAX_SOCKET_PATH
        bad.call("socket path is #{path.bytesize} bytes, longer than the #{MAX_SOCKET_PATH} a unix socket address holds")
      end

      path
    end

    private

    # The servers from ENV["MEMCACHE_SERVERS"] (comma-separated) when set,
    # else localhost:11211 (see {.store_settings}).
    def memcached_defaults
      env = ENV["MEMCACHE_SERVERS"].to_s.strip
      self.memcache_servers = env.empty? ? ["localhost:#{DEFAULT_PORT}"] : env.split(",")
    end

    @probed = {} # [host, port] => true: asked once per process whether it may evict
    @probed_mutex = Mutex.new

    # @api private
    # @param addresses [Array<Array(String, Integer)>]
    # @return [Array<Array(String, Integer)>] those not asked yet in this process (now marked asked)
    def self.unprobed_servers(addresses)
      @probed_mutex.synchronize { addresses.reject { |address| @probed[address] }.each { |address| @probed[address] = true } }
    end

    private_class_method :unprobed_servers

    # @return [Native::Client] a client of the servers (connects lazily)
    def memcached_client
      client = Native::Client.new(server_addresses, (connect_timeout * 1000).ceil, (io_timeout * 1000).ceil, 1)
      warn_evicting_servers if logger
      client
    end

    # Logs, at warn level and once per process, each server that may evict
    # (started without -M): a live lock can vanish from it before its lease
    # ends. Asked when the first client of a server is made; a server that
    # does not answer then is not asked again (its locks will say so).
    def warn_evicting_servers
      fresh = Configuration.__send__(:unprobed_servers, server_addresses)
      return if fresh.empty?

      Native::Client._evicting_servers(fresh, (connect_timeout * 1000).ceil, (io_timeout * 1000).ceil).each do |line|
        logger.warn("MegaMutex: memcached #{line}") if Configuration.quorum_first_warning?(line)
      end
    rescue Error, SystemCallError
      nil
    end

    # @return [String] "host:port", "[v6addr]:port" or the socket path
    def format_server(host, port)
      return host if port.zero?

      host.include?(":") ? "[#{host}]:#{port}" : "#{host}:#{port}"
    end
  end
end
