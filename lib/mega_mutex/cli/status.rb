# frozen_string_literal: true

require "socket"

module MegaMutex
  class CLI
    # What `mega_mutex status` asks the server beyond the holder: the lease
    # left, with the meta protocol, on a connection of its own.
    # @api private
    module Status
      private

      # Asks the server that keeps `key` for its remaining expiry with the meta
      # protocol: "mg <key> v t" -> "VA <len> t<secs>" + data, or "EN".
      # @return [Integer, Symbol] seconds left; -1 never expires; :gone; :unknown
      def lease_left(server, key)
        config = MegaMutex.configuration
        host, port = server
        sock = open_socket(host, port, config.connect_timeout)
        begin
          sock.write("mg #{key} v t\r\n")
          line = read_line(sock, config.io_timeout)
          case line
          when /\AEN\z/ then :gone
          when /\A(?:VA \d+|HD)((?: \S+)*)\z/
            flag = Regexp.last_match(1).split.find { |f| f.start_with?("t") }
            flag ? Integer(flag[1..]) : :unknown
          else :unknown # an older memcached without meta commands
          end
        ensure
          sock.close
        end
      rescue SystemCallError, IOError, SocketError => e
        raise ConnectionError, "memcached #{format_server(server)}: #{e.message}"
      end

      def open_socket(host, port, connect_timeout)
        return UNIXSocket.new(host) if port.zero?

        Socket.tcp(host, port, connect_timeout: connect_timeout)
      end

      def read_line(sock, io_timeout)
        line = +""
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + io_timeout
        until line.include?("\r\n")
          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          raise IOError, "no answer within #{io_timeout} s" if left <= 0 || !sock.wait_readable(left)

          line << sock.readpartial(4096)
        end
        line[/\A[^\r]*/]
      end

      def describe_lease(lease)
        case lease
        when :unknown then "lease unknown"
        when -1 then "no expiry"
        else "lease #{lease} s left"
        end
      end

      def format_server(server)
        host, port = server
        return host if port.zero?

        host.include?(":") ? "[#{host}]:#{port}" : "#{host}:#{port}"
      end
    end
  end
end
