# frozen_string_literal: true

module MegaMutex
  class Renewer
    # The requests of one server (of one pool), done in a thread of its own.
    # @api private
    class Lane
      # @param renewer [Renewer] gets the jobs back (Renewer#run_job)
      # @param name [String] the server, for the thread's name
      def initialize(renewer, name)
        @renewer = renewer
        @name = name
        @queue = Queue.new
        @thread = nil
      end

      # Queues a job ([:renew or :clean_up, hold]); (re)starts the thread.
      # @return [void]
      def push(job)
        start unless @thread&.alive?
        @queue << job
      end

      private

      def start
        @thread = Thread.new do
          # Callers may hold interrupts deferred; this thread must stay killable.
          Thread.handle_interrupt(Object => :immediate) { loop { @renewer.run_job(*@queue.pop) } }
        end
        @thread.name = "mega_mutex renewer #{@name}"
        @thread.report_on_exception = false
      end
    end
  end
end
