# frozen_string_literal: true

require_relative "fault_proxy"

# A FaultProxy that a :quorum store can talk through. The quorum store opens
# every connection with "stats" and "stats settings", whose replies are many
# lines ending in END; FaultProxy relays one line per command for anything
# but get/gets, which would leave the store waiting for the rest. This one
# relays those replies whole. Used by spec/quorum_review_spec.rb to put a
# fault between one client and one server of a quorum (that server stays
# reachable directly, for the specs and for other clients).
class QuorumReviewProxy < FaultProxy
  MULTI_LINE = %w[stats].freeze
  STATS_END = /\A(END|ERROR|SERVER_ERROR.*|CLIENT_ERROR.*)\r\n\z/

  private

  def read_reply(upstream, name)
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
