# frozen_string_literal: true

require "socket"
require_relative "fault_proxy"

# A TCP proxy in front of a REAL MariaDB that injects faults into the reply
# to a statement (the MySQL protocol's COM_QUERY) whose text matches a
# pattern; FaultProxy's listener, threads and stop, with a relay that speaks
# MySQL packets. The handshake and every other packet pass through
# untouched.
#
#   proxy = MysqlReviewProxy.new(db.port).start
#   proxy.inject(/RELEASE_LOCK/, :stall)          # the reply never comes (until #stop)
#   proxy.inject(/GET_LOCK/, :cut, times: 1)      # half the reply's first bytes, then both ends closed
#   proxy.inject(/IS_USED_LOCK/, :drop_and_close) # forwarded, the reply discarded, both ends closed
#   proxy.inject(/GET_LOCK/, :close_before)       # both ends closed, the statement never sent
#   proxy.fired(:stall)                           # how often a fault fired
#   proxy.stop
#
# A fault closes the upstream connection too, except :stall, which keeps it
# open (a middlebox that stops forwarding: the server does not see the
# client go).
class MysqlReviewProxy < FaultProxy
  COM_QUERY = 3

  # @return [String] a mysql:// URL through the proxy
  def url
    "mysql://root@#{address}"
  end

  # @param pattern [Regexp] matched against the statement's text
  # @param fault [Symbol] :stall, :cut, :drop_and_close or :close_before
  # @param times [Integer, nil] how often; nil: every time
  def inject(pattern, fault, times: nil)
    @lock.synchronize { @faults << { pattern: pattern, fault: fault, left: times } }
    self
  end

  private

  # One connection: packets from the client are parsed (4-byte header:
  # 3-byte length, sequence id), bytes from the server are passed on or
  # faulted while a matched statement's reply is due.
  def relay(client)
    upstream = connect_upstream
    pending = "".b
    fault = nil
    loop do
      ready, = IO.select([client, upstream])
      if ready.include?(client)
        data = client.read_nonblock(65_536, exception: false)
        break if data.nil?
        next if data == :wait_readable

        pending << data
        while (packet = next_packet(pending))
          fault = fault_for(packet) if packet.getbyte(3).zero? && packet.getbyte(4) == COM_QUERY
          return if fault == :close_before

          upstream.write(packet)
        end
      end
      next unless ready.include?(upstream)

      data = upstream.read_nonblock(65_536, exception: false)
      break if data.nil?
      next if data == :wait_readable
      break unless answer(client, data, fault)
    end
  rescue IOError, SystemCallError
    nil
  ensure
    [client, upstream].each { |s| s.close if s && !s.closed? }
  end

  # The first whole packet of `pending`, taken off it; nil if none yet.
  def next_packet(pending)
    return nil if pending.bytesize < 4

    len = pending.getbyte(0) | (pending.getbyte(1) << 8) | (pending.getbyte(2) << 16)
    pending.bytesize < 4 + len ? nil : pending.slice!(0, 4 + len)
  end

  # Passes the server's bytes on (or not); false when the connection must close.
  def answer(client, data, fault)
    case fault
    when nil then client.write(data)
    when :stall then pause(nil)
    when :cut then client.write(data.byteslice(0, [data.bytesize / 2, 1].max))
    end
    fault.nil? || fault == :stall ? !@stopping : false
  end

  def fault_for(packet)
    text = packet.byteslice(5..).to_s
    @lock.synchronize do
      f = @faults.find { |x| x[:pattern].match?(text) && (x[:left].nil? || x[:left].positive?) }
      next nil if f.nil?

      f[:left] -= 1 if f[:left]
      @log << [nil, f[:fault]]
      f[:fault]
    end
  end
end
