# frozen_string_literal: true

require "socket"

# A proxy in front of a real memcached that keeps its clients' connections
# when the server behind it goes away, as the multiplexing memcached proxies
# do (mcrouter, twemproxy): the next request goes to the server on a new
# upstream connection, the client's stays open. Listens on 127.0.0.1, on a
# free port.
#
#   proxy = MemcachedReviewProxy.new(server.port).start
#   proxy.address # => "127.0.0.1:40123"
#   proxy.stop
class MemcachedReviewProxy
  attr_reader :port

  def initialize(upstream_port)
    @upstream_port = upstream_port
    @sockets = Queue.new
    @threads = Queue.new
  end

  def address
    "127.0.0.1:#{port}"
  end

  def start
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @threads << Thread.new { accept_loop }
    self
  end

  def stop
    @server.close
    @sockets.close
    while (s = @sockets.pop)
      s.close unless s.closed?
    end
    @threads.close
    while (t = @threads.pop)
      t.join(5) || t.kill
    end
  end

  private

  def accept_loop
    loop do
      client = @server.accept
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
