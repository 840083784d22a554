# frozen_string_literal: true

require "socket"

# A proxy in front of a real memcached (or any TCP server on 127.0.0.1)
# that keeps its clients' connections when the server behind it goes away,
# as the multiplexing memcached proxies do (mcrouter, twemproxy): the next
# request goes to the server on a new upstream connection, the client's
# stays open. Listening starts at once; #stop closes the listener and every
# connection (from then on the address refuses connections).
#
#   proxy = MemcachedReviewProxy.new(server.port)                      # on 127.0.0.1, a free port
#   proxy = MemcachedReviewProxy.new(port, host: "127.0.0.2", port: port) # a server's second address
#   proxy.port
#   proxy.stop
class MemcachedReviewProxy
  attr_reader :port

  # @param upstream_port [Integer] the server's port on 127.0.0.1
  # @param host [String] the address to listen on
  # @param port [Integer] the port to listen on (0: a free one)
  def initialize(upstream_port, host: "127.0.0.1", port: 0)
    @listener = TCPServer.new(host, port)
    @port = @listener.addr[1]
    @upstream_port = upstream_port
    @sockets = Queue.new
    @threads = Queue.new
    @threads << Thread.new { accept_loop }
  end

  def stop
    @listener.close unless @listener.closed?
    [@sockets, @threads].each(&:close)
    while (s = @sockets.pop)
      s.close unless s.closed?
    end
    while (t = @threads.pop)
      t.join(5) || t.kill
    end
  end

  private

  def accept_loop
    loop do
      client = @listener.accept
      @sockets << client
      @threads << Thread.new { serve(client) }
    end
  rescue IOError, SystemCallError, ClosedQueueError
    nil
  end

  # Client bytes go to the current upstream connection, made when there is
  # none; its replies go back until it ends - the client's connection stays.
  def serve(client)
    upstream = nil
    loop do
      data = client.readpartial(65_536)
      if upstream.nil? || upstream.closed?
        upstream = TCPSocket.new("127.0.0.1", @upstream_port)
        @sockets << upstream
        @threads << copy_back(upstream, client)
      end
      upstream.write(data)
    end
  rescue IOError, SystemCallError, ClosedQueueError
    nil
  ensure
    client.close unless client.closed?
  end

  def copy_back(upstream, client)
    Thread.new do
      loop { client.write(upstream.readpartial(65_536)) }
    rescue IOError, SystemCallError
      nil
    ensure
      upstream.close unless upstream.closed?
    end
  end
end
