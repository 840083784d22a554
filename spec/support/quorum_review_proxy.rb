# frozen_string_literal: true

require_relative "fault_proxy"

# A FaultProxy that a :quorum store can talk through. The quorum store opens
# every connection with "stats" and "stats settings", whose replies are many
# lines ending in END; FaultProxy relays one line per command for anything
# but get/gets, which would leave the store waiting for the rest. This one
# relays those replies whole, and sets TCP_NODELAY on both sides: the store
# pipelines several commands in one write, and a proxy that answers them
# one small write at a time otherwise waits 40 ms for each delayed ACK -
# long enough for the quorum to drop that server as too slow. Used by spec/quorum_review_spec.rb to put a
# fault between one client and one server of a quorum (that server stays
# reachable directly, for the specs and for other clients).
class QuorumReviewProxy < FaultProxy
  MULTI_LINE = %w[stats].freeze
  STATS_END = /\A(END|ERROR|SERVER_ERROR.*|CLIENT_ERROR.*)\r\n\z/

  # Relays the reply to command `name` (when `if:` holds), then runs the
  # block before the client's next command is read: something that happens
  # on the server between two of the client's commands (another client's
  # write landing there).
  # @param times [Integer, nil] how often; nil: every time
  def after_reply(name, times: nil, if: nil, &block)
    cond = binding.local_variable_get(:if)
    @lock.synchronize { @faults << { name: name.to_s, fault: :after_reply, left: times, cond: cond, then: block } }
    self
  end

  private

  def answer(client, reply, fault)
    return super unless fault && fault[:fault] == :after_reply

    client.write(reply)
    fault[:then].call
    true
  end

  def relay(client)
    client.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    super
  end

  def read_reply(upstream, name)
    upstream.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    return super unless MULTI_LINE.include?(name)

    reply = +""
    loop do
      line = upstream.gets("\r\n")
      return nil if line.nil?

      reply << line
      return reply if line.match?(STATS_END)
    end
  end
end
